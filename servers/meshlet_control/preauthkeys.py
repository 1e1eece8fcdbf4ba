"""Pre-auth keys: their text form, how they are made and checked, and the State methods that manage them.

A key is `mlt-auth-<12 id chars>-<32 secret chars>` (a-z, 0-9: about 165
bits of secret). The database keeps the public prefix `mlt-auth-<id>` and the
SHA-256 of the whole key, never the key: the one place the whole key ever
appears is the PreAuthKey that `create_preauth_key` returns. Listings show
`<prefix>-***`. A key is found by id, by prefix or by the whole key (the
secret is then compared in constant time).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from typing import Callable, Iterable

from . import policy as policy_mod
from .db import Database, Row
from .records import PreAuthKey, StateError, User, key_from_row

KEY_PREFIX = "mlt-auth-"
_KEY_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_KEY_ID_LEN = 12
_KEY_SECRET_LEN = 32  # 36^32: about 165 bits
_KEY_RE = re.compile(r"^mlt-auth-([a-z0-9]{12})(?:-([a-z0-9]{32}))?$")
_TAG_RE = re.compile(r"^tag:[A-Za-z][A-Za-z0-9-]*$")


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def mark_used(db: Database, pak: PreAuthKey) -> None:
    """Spends a single-use key (inside the caller's transaction)."""
    if not pak.reusable and not pak.used:
        db.update_preauth_key(pak.id, {"used": 1})


class PreAuthKeys:
    """State's pre-auth key methods (the attributes below are State's)."""

    db: Database
    _now: Callable[[], int]
    _users: dict[int, User]
    _policy: policy_mod.Policy | None

    def create_preauth_key(
        self,
        user: User,
        reusable: bool = False,
        ephemeral: bool = False,
        tags: Iterable[str] = (),
        expiry_ms: int = 0,
    ) -> PreAuthKey:
        """A new key; the returned object is the only place the whole key ever appears."""
        tag_list = sorted(set(tags))
        for t in tag_list:
            if not _TAG_RE.match(t):
                raise StateError(
                    "tag %r is not valid; write tag: and a name starting with a letter, e.g. tag:server" % t
                )
            if self._policy is not None and t not in self._policy.tag_owners:
                raise StateError(
                    "tag %r is not in the policy's tagOwners; add it there (meshlet-control policy "
                    "set FILE) or drop it" % t
                )
        if self._users.get(user.id) is None:
            raise StateError(
                "user %r does not exist; create it with `meshlet-control users create NAME`" % user.name
            )
        now = self._now()
        key_id = "".join(secrets.choice(_KEY_ALPHABET) for _ in range(_KEY_ID_LEN))
        secret = "".join(secrets.choice(_KEY_ALPHABET) for _ in range(_KEY_SECRET_LEN))
        prefix = KEY_PREFIX + key_id
        key = prefix + "-" + secret
        with self.db.transaction():
            kid = self.db.insert_preauth_key(
                prefix, _hash(key), user.id, reusable, ephemeral, json.dumps(tag_list), expiry_ms, now
            )
        return PreAuthKey(kid, key, user.id, reusable, ephemeral, tag_list, expiry_ms, False, now, prefix)

    def list_preauth_keys(self, user: User | None = None) -> list[PreAuthKey]:
        return [key_from_row(r) for r in self.db.preauth_keys(None if user is None else user.id)]

    def expire_preauth_key(self, key_or_id: str | int) -> PreAuthKey:
        """Makes a key unusable for new nodes (nodes it admitted stay). Accepts the id, the key or its prefix."""
        row = self._find_key_row(key_or_id)
        if row is None:
            raise StateError("no pre-auth key %r; see `meshlet-control keys list`" % (key_or_id,))
        now = self._now()
        if not (row["expiry_ms"] and row["expiry_ms"] <= now):
            with self.db.transaction():
                self.db.update_preauth_key(int(row["id"]), {"expiry_ms": now})
        again = self.db.preauth_key(int(row["id"]))
        assert again is not None
        return key_from_row(again)

    def _find_key_row(self, key_or_id: str | int) -> Row | None:
        text = str(key_or_id).strip()
        if text.isdigit():
            return self.db.preauth_key(int(text))
        m = _KEY_RE.match(text.removesuffix("-***"))
        if m is None:
            return None
        row = self.db.preauth_key_by_prefix(KEY_PREFIX + m.group(1))
        if row is not None and m.group(2) and not hmac.compare_digest(_hash(text), row["key_hash"]):
            return None
        return row

    def _lookup_auth_key(self, text: str) -> PreAuthKey | None:
        m = _KEY_RE.match(text.strip())
        if m is None or m.group(2) is None:
            return None
        row = self.db.preauth_key_by_prefix(KEY_PREFIX + m.group(1))
        if row is None or not hmac.compare_digest(_hash(text.strip()), row["key_hash"]):
            return None
        return key_from_row(row)

    def _use_key(self, pak: PreAuthKey) -> None:
        mark_used(self.db, pak)
