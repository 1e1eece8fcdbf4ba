"""Pointing the host's resolver at 100.100.100.100, and putting things back.

Four ways, tried in this order by mode "auto" (one log line says which and why):

* "resolved": /etc/resolv.conf belongs to systemd-resolved (a symlink into
  /run/systemd/resolve/, or a file naming its stub 127.0.0.53) and
  `resolvectl` exists. The tailnet interface gets 100.100.100.100 as its DNS
  server and the MagicDNS suffix (plus search domains and the tailnet's
  reverse zones) as its domains; `~.` too when control sent default
  resolvers. Undo: `resolvectl revert <if>` (and the settings vanish with the
  interface anyway).
* "resolv.conf": rewrite /etc/resolv.conf to `nameserver 100.100.100.100`
  and `search <suffix> …`, after saving the original (bytes, mode, owner, or
  the symlink it was) in the state directory. Undo: put it back exactly,
  unless someone else has replaced our file since (then theirs stays).
* "hosts": a block of `100.x.y.z name.suffix name` lines between marker
  lines in /etc/hosts, rewritten on every netmap change. No forwarding, no
  search domain: only the tailnet's names. Undo: remove the block.
* "off": touch nothing (`accept_dns` false).

What was done is recorded in `<state_dir>/dns-os.json` before doing it, so a
meshlet that crashed leaves enough behind for the next one to undo it: the
first call to `choose()`, `configure()`, `original_nameservers()` or
`restore()` does that before anything else.
"""

import json
import logging
import os
import shutil
import stat
import subprocess

from meshlet_host import statefile

from . import sysfiles
from .names import REVERSE_ZONES, SERVICE_IP4, SERVICE_IPS

log = logging.getLogger("meshlet_agent.dns")

MODES = ("auto", "resolved", "resolv.conf", "hosts", "off")
RESOLVED_STUB = "127.0.0.53"
RESOLV_CONF_MARKER = "# meshlet MagicDNS:"
"""First line of a resolv.conf meshlet wrote; restore() only replaces a file that starts with it."""
HOSTS_BEGIN = "# BEGIN meshlet MagicDNS (managed by meshlet; removed on `meshlet down`)"
HOSTS_END = "# END meshlet MagicDNS"
STATE_NAME = "dns-os.json"
BACKUP_NAME = "resolv.conf.pre-meshlet"
RESOLVECTL_TIMEOUT_S = 10.0


class OsDnsError(Exception):
    """The system's DNS settings could not be changed or restored; the message names the fix."""


def _labels(domain: str) -> str:
    return domain.strip().strip(".").lower()


class OsDns:
    """The host's DNS settings for one tailnet interface."""

    def __init__(
        self,
        ifname: str,
        state_dir: str,
        *,
        mode: str = "auto",
        resolv_conf: str = "/etc/resolv.conf",
        hosts: str = "/etc/hosts",
        resolvectl: str = "resolvectl",
        resolved_conf: str = "/run/systemd/resolve/resolv.conf",
    ) -> None:
        if mode not in MODES:
            raise OsDnsError("unknown DNS mode %r; use one of %s" % (mode, ", ".join(MODES)))
        self.ifname = ifname
        self.state_dir = state_dir
        self.mode = mode  # the concrete mode once choose() has run
        self.reason = ""  # why auto chose it
        self.resolv_conf = resolv_conf
        self.hosts = hosts
        self.resolvectl = resolvectl
        self.resolved_conf = resolved_conf
        self._state_path = os.path.join(state_dir, STATE_NAME)
        self._backup_path = os.path.join(state_dir, BACKUP_NAME)
        self._recovered = False
        self._configured = False
        self._suffix = ""
        self._hosts_entries: list[tuple[str, str]] = []

    # -- public API ---------------------------------------------------------------------------

    def choose(self) -> str:
        """The concrete mode (auto: detected now, once) after undoing what a crashed run left."""
        self._recover()
        if self.mode == "auto":
            self.mode, self.reason = self._detect()
            log.info("DNS: using mode %s: %s", self.mode, self.reason)
        return self.mode

    def configure(
        self,
        suffix: str,
        search_domains: "list[str]",
        nameserver: str = SERVICE_IP4,
        *,
        default_route: bool = False,
    ) -> None:
        """Makes the host ask `nameserver` for the tailnet's names (and for all names, except in resolved
        mode without `default_route`). The suffix always comes first in the search list, so that
        `ping pi-kitchen` works. Safe to call again on every netmap change.

        Raises:
            OsDnsError: the settings could not be written (the message says what to do).
        """
        auto = self.mode == "auto"
        mode = self.choose()
        self._suffix = _labels(suffix)
        search = [d for d in dict.fromkeys([self._suffix] + [_labels(d) for d in search_domains]) if d]
        if mode == "resolved":
            self._configure_resolved(search, nameserver, default_route)
        elif mode == "resolv.conf":
            try:
                self._configure_resolv_conf(search, nameserver)
            except OsDnsError as e:
                if not auto or not os.access(self.hosts, os.W_OK):
                    raise
                log.warning("DNS: %s; falling back to mode hosts", e)
                self.mode, self.reason = "hosts", str(e)
                self._configure_hosts()
        elif mode == "hosts":
            self._configure_hosts()
        self._configured = mode != "off"

    def update_hosts(self, entries: "list[tuple[str, str]]") -> None:
        """(address, FQDN) pairs for hosts mode (Resolver.host_entries()); ignored in other modes."""
        self._hosts_entries = list(entries)
        if self.mode == "hosts" and self._configured:
            self._write_hosts(self._hosts_entries)

    def restore(self) -> None:
        """Undoes configure() (or a crashed run's settings); safe to call when nothing was changed."""
        self._recover()
        state = self._load_state()
        if state is not None:
            self._undo(state)
        self._configured = False

    def original_nameservers(self) -> "list[tuple[str, int]]":
        """The resolvers the host used before meshlet, as (ip, 53), for forwarding what is not ours.

        Skips systemd-resolved's stub and 100.100.100.100 (asking either would loop back to us); in
        resolved mode, or when the original named only the stub, reads resolved's own upstream list.
        """
        mode = self.choose()
        text: str | None = None
        if mode != "resolved":
            state = self._load_state()
            if state is not None and state.get("mode") == "resolv.conf" and os.path.exists(self._backup_path):
                text = sysfiles.read_text(self._backup_path)
            else:
                text = sysfiles.read_text(self.resolv_conf)
        servers = sysfiles.parse_resolv_conf(text or "")[0]
        if mode == "resolved" or (servers and all(s == RESOLVED_STUB for s in servers)):
            servers = sysfiles.parse_resolv_conf(sysfiles.read_text(self.resolved_conf) or "")[0]
        out: list[tuple[str, int]] = []
        for s in servers:
            if s == RESOLVED_STUB or s.split("%")[0] in SERVICE_IPS or (s, 53) in out:
                continue
            out.append((s, 53))
        return out

    # -- detection ----------------------------------------------------------------------------

    def _resolved_manages_resolv_conf(self) -> bool:
        path = self.resolv_conf
        if os.path.islink(path) and "/systemd/resolve/" in os.path.realpath(path) + "/" + os.readlink(path):
            return True
        servers = sysfiles.parse_resolv_conf(sysfiles.read_text(path) or "")[0]
        return RESOLVED_STUB in servers

    def _resolvectl_found(self) -> bool:
        if os.sep in self.resolvectl:
            return os.access(self.resolvectl, os.X_OK)
        return shutil.which(self.resolvectl) is not None

    def _detect(self) -> "tuple[str, str]":
        note = ""
        if self._resolved_manages_resolv_conf():
            if self._resolvectl_found():
                return "resolved", "%s belongs to systemd-resolved and %s is available" % (
                    self.resolv_conf,
                    self.resolvectl,
                )
            note = " (it names systemd-resolved, but %s was not found)" % self.resolvectl
        directory = os.path.dirname(os.path.abspath(self.resolv_conf))
        if os.access(directory, os.W_OK) or os.access(self.resolv_conf, os.W_OK):
            return "resolv.conf", "%s can be rewritten%s; the original is kept in %s" % (
                self.resolv_conf,
                note,
                self._backup_path,
            )
        if os.access(self.hosts, os.W_OK):
            return "hosts", "%s is read-only; tailnet names go into %s (no search domain, no forwarding)" % (
                self.resolv_conf,
                self.hosts,
            )
        return "off", "neither %s nor %s can be written; MagicDNS names will not resolve" % (
            self.resolv_conf,
            self.hosts,
        )

    # -- the state file -----------------------------------------------------------------------

    def _load_state(self) -> "dict[str, object] | None":
        try:
            data = statefile.read_private(self._state_path)
        except statefile.StateFileError as e:
            raise OsDnsError(str(e)) from None
        if data is None:
            return None
        try:
            doc = json.loads(data)
        except ValueError:
            log.warning("DNS: %s is not JSON; ignoring it", self._state_path)
            return None
        return doc if isinstance(doc, dict) else None

    def _save_state(self, doc: "dict[str, object]") -> None:
        try:
            statefile.ensure_dir(self.state_dir)
            statefile.write_atomic(self._state_path, json.dumps(doc, sort_keys=True).encode())
        except statefile.StateFileError as e:
            raise OsDnsError(str(e)) from None

    def _drop_state(self) -> None:
        for path in (self._backup_path, self._state_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def _recover(self) -> None:
        if self._recovered:
            return
        self._recovered = True
        state = self._load_state()
        if state is not None:
            log.warning(
                "DNS: found %s-mode settings from a meshlet that did not stop cleanly; undoing them",
                state.get("mode"),
            )
            self._undo(state)

    def _undo(self, state: "dict[str, object]") -> None:
        mode = state.get("mode")
        if mode == "resolved":
            ifname = state.get("ifname")
            try:
                self._resolvectl("revert", str(ifname))
            except OsDnsError as e:
                log.info("DNS: %s (the interface is probably gone, which clears its settings too)", e)
        elif mode == "resolv.conf":
            self._restore_resolv_conf(state)
        elif mode == "hosts":
            self._write_hosts([])
        self._drop_state()

    # -- resolved -----------------------------------------------------------------------------

    def _resolvectl(self, *args: str) -> None:
        cmd = [self.resolvectl, *args]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=RESOLVECTL_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise OsDnsError(
                "`%s` could not run (%s); check that systemd-resolved is running, or choose DNS mode resolv.conf"
                % (" ".join(cmd), e)
            ) from None
        if p.returncode != 0:
            raise OsDnsError(
                "`%s` failed: %s; check `systemctl status systemd-resolved`, or choose DNS mode resolv.conf"
                % (" ".join(cmd), (p.stderr or p.stdout).strip() or "exit status %d" % p.returncode)
            )

    def _configure_resolved(self, search: "list[str]", nameserver: str, default_route: bool) -> None:
        self._save_state({"mode": "resolved", "ifname": self.ifname})
        domains = search + ["~" + z.rstrip(".") for z in REVERSE_ZONES]  # search domains also route
        if default_route:
            domains.append("~.")
        self._resolvectl("dns", self.ifname, nameserver)
        self._resolvectl("domain", self.ifname, *domains)
        try:
            self._resolvectl("default-route", self.ifname, "true" if default_route else "false")
        except OsDnsError as e:  # systemd < 246 has no default-route; the domains still route
            log.debug("DNS: %s", e)

    # -- resolv.conf --------------------------------------------------------------------------

    def _configure_resolv_conf(self, search: "list[str]", nameserver: str) -> None:
        path = self.resolv_conf
        state = self._load_state()
        if state is None or state.get("mode") != "resolv.conf":
            state = self._backup_resolv_conf()
        undo = (
            "ln -sf %s %s" % (state["target"], path)
            if state["kind"] == "symlink"
            else "rm %s" % path
            if state["kind"] == "missing"
            else "cp %s %s" % (self._backup_path, path)
        )
        lines = [
            "%s this file is managed by meshlet (tailnet interface %s)." % (RESOLV_CONF_MARKER, self.ifname),
            "# meshlet restores the original when it stops (`meshlet down`). To undo by hand: %s" % undo,
            "nameserver %s" % nameserver,
        ]
        if search:
            lines.append("search %s" % " ".join(search))
        data = ("\n".join(lines) + "\n").encode()
        try:
            renamed = sysfiles.replace_file(path, data, mode=0o644)
        except OSError as e:
            self._drop_state()  # nothing changed: forget the backup
            raise OsDnsError("cannot write %s: %s" % (path, e.strerror or e)) from None
        if not renamed:
            log.info("DNS: %s is a mount point (container or network namespace); rewrote it in place", path)

    def _backup_resolv_conf(self) -> "dict[str, object]":
        path = self.resolv_conf
        state: dict[str, object] = {"mode": "resolv.conf", "path": path}
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            state.update(kind="missing", target="")
            content = b""
        except OSError as e:
            raise OsDnsError("cannot read %s: %s" % (path, e.strerror)) from None
        else:
            if stat.S_ISLNK(st.st_mode):
                state.update(kind="symlink", target=os.readlink(path))
                content = (sysfiles.read_text(path) or "").encode()
            else:
                try:
                    with open(path, "rb") as f:
                        content = f.read()
                except OSError as e:
                    raise OsDnsError("cannot read %s: %s" % (path, e.strerror)) from None
                state.update(
                    kind="file", target="", file_mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid
                )
        try:
            statefile.ensure_dir(self.state_dir)
            statefile.write_atomic(self._backup_path, content)
        except statefile.StateFileError as e:
            raise OsDnsError(str(e)) from None
        self._save_state(state)
        return state

    def _restore_resolv_conf(self, state: "dict[str, object]") -> None:
        path = str(state.get("path") or self.resolv_conf)
        current = sysfiles.read_text(path)
        if os.path.islink(path) or current is None or not current.startswith(RESOLV_CONF_MARKER):
            log.warning(
                "DNS: %s was replaced by something else since meshlet wrote it; leaving it alone", path
            )
            return
        kind = state.get("kind")
        try:
            if kind == "symlink":
                tmp = "%s.meshlet-tmp-%d" % (path, os.getpid())
                os.symlink(str(state.get("target")), tmp)
                try:
                    os.replace(tmp, path)
                except OSError:
                    os.unlink(tmp)
                    raise
            elif kind == "missing":
                os.unlink(path)
            else:
                with open(self._backup_path, "rb") as f:
                    original = f.read()
                mode, uid, gid = state.get("file_mode"), state.get("uid"), state.get("gid")
                sysfiles.replace_file(
                    path,
                    original,
                    mode=mode if isinstance(mode, int) else 0o644,
                    uid=uid if isinstance(uid, int) else -1,
                    gid=gid if isinstance(gid, int) else -1,
                )
        except OSError as e:
            raise OsDnsError(
                "cannot restore %s: %s; the original is in %s" % (path, e.strerror or e, self._backup_path)
            ) from None
        log.info("DNS: restored the original %s", path)

    # -- hosts --------------------------------------------------------------------------------

    def _configure_hosts(self) -> None:
        self._save_state({"mode": "hosts", "path": self.hosts})
        self._write_hosts(self._hosts_entries)

    def _write_hosts(self, entries: "list[tuple[str, str]]") -> None:
        path = self.hosts
        text = sysfiles.read_text(path)
        if text is None:
            text = ""
        kept: list[str] = []
        inside = False
        for line in text.splitlines():
            if line.strip() == HOSTS_BEGIN:
                inside = True
            elif inside and line.strip() == HOSTS_END:
                inside = False
            elif not inside:
                kept.append(line)
        out = list(kept)
        if entries:
            out.append(HOSTS_BEGIN)
            for ip, name in entries:
                full = _labels(name)
                names = [full]
                if self._suffix and full.endswith("." + self._suffix):
                    short = full[: -len(self._suffix) - 1]
                    if "." not in short:
                        names.append(short)
                out.append("%s %s" % (ip, " ".join(names)))
            out.append(HOSTS_END)
        new = ("\n".join(out) + "\n").encode() if out else b""
        if new == text.encode():
            return
        try:
            st = os.stat(path)
            mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
        except OSError:
            mode, uid, gid = 0o644, -1, -1
        try:
            sysfiles.replace_file(path, new, mode=mode, uid=uid, gid=gid)
        except OSError as e:
            raise OsDnsError(
                "cannot write %s: %s; make it writable or choose DNS mode off" % (path, e.strerror or e)
            ) from None
