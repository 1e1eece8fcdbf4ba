"""`meshlet-derp`'s command line, config file and key file: one-line errors with the fix, and a real start."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from meshlet_derp import cli, config, state


def _fails(argv, capsys, *words):  # type: ignore[no-untyped-def]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # earlier lines would be logs
    assert err.startswith("meshlet-derp: "), err
    for w in words:
        assert w in err, err
    return err


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--addr",
        "--stun-port",
        "--certdir",
        "--mesh-psk-file",
        "--mesh-with",
        "--config",
        "--state-dir",
    ):
        assert flag in out
    assert "examples:" in out and "meshlet-derp --http" in out


def test_errors_name_the_problem_and_the_fix(tmp_path, capsys):
    _fails([], capsys, "--certfile", "--http")  # TLS without a certificate
    _fails(["--http", "-a", "nonsense"], capsys, "addr", "HOST:PORT")
    _fails(["--http", "-a", "::1:443"], capsys, "brackets")
    _fails(["--http", "--mesh-with", "a:443"], capsys, "--mesh-psk-file")
    _fails(
        ["--certfile", str(tmp_path / "nope.pem"), "--keyfile", str(tmp_path / "nope.key")],
        capsys,
        "does not exist",
    )
    _fails(["--http", "--queue-depth", "0"], capsys, "queue_depth")
    bad = tmp_path / "bad.toml"
    bad.write_text("htp = true\n")
    _fails(["--config", str(bad)], capsys, "htp", "known settings")
    bad.write_text('stun_port = "3478"\n')
    _fails(["--config", str(bad)], capsys, "stun_port", "int")
    bad.write_text("this is not toml")
    _fails(["--config", str(bad)], capsys, "not valid TOML")
    _fails(["--config", str(tmp_path / "missing.toml")], capsys, "cannot read config")
    psk = tmp_path / "mesh.key"
    psk.write_text("not hex")
    args = ["--http", "--state-dir", str(tmp_path / "st"), "--mesh-psk-file", str(psk), "-a", "127.0.0.1:0",
            "--metrics-addr", "", "--no-stun"]  # fmt: skip
    _fails(args, capsys, "64 hex digits", "openssl rand -hex 32")


def test_toml_then_flags(tmp_path):
    f = tmp_path / "derp.toml"
    f.write_text('http = true\naddr = "127.0.0.1:3340"\nmesh_with = ["a:443", "b:443"]\nwrite_timeout_s = 3\n'
                 'mesh-psk-file = "/x"\n')  # fmt: skip
    cfg = cli.load_config(["--config", str(f), "-a", "127.0.0.1:9999"])
    assert cfg.http and cfg.listen_addr() == ("127.0.0.1", 9999)
    assert cfg.mesh_with == ["a:443", "b:443"] and cfg.write_timeout_s == 3.0
    assert cli.load_config(["--http", "--mesh-with", "a:1,b:2", "--mesh-psk-file", "/x"]).mesh_with == [
        "a:1",
        "b:2",
    ]
    assert config.Config(http=True).listen_addr() == ("", 3340)
    assert config.parse_hostport("[::1]:443", "addr") == ("::1", 443)


def test_server_key_is_created_once_with_mode_0600(tmp_path):
    d = str(tmp_path / "state")
    key, created = state.load_or_create_server_key(d)
    assert created
    path = os.path.join(d, config.KEY_FILE_NAME)
    assert os.stat(path).st_mode & 0o777 == 0o600
    again, created = state.load_or_create_server_key(d)
    assert not created and again == key
    os.chmod(path, 0o644)
    with pytest.raises(config.ConfigError, match="chmod 600"):
        state.load_or_create_server_key(d)
    os.chmod(path, 0o600)
    with open(path, "w") as f:
        f.write("garbage")
    with pytest.raises(config.ConfigError, match="move it away"):
        state.load_or_create_server_key(d)


def test_mesh_key_file(tmp_path):
    f = tmp_path / "k"
    f.write_text("  " + "AB" * 32 + "\n")
    assert state.load_mesh_key(str(f)) == bytes([0xAB]) * 32
    f.write_text("00" * 32)
    with pytest.raises(config.ConfigError, match="all zeros"):
        state.load_mesh_key(str(f))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_python_m_meshlet_derp_starts_serves_and_stops_on_sigterm(tmp_path):
    port = _free_port()
    argv = [sys.executable, "-m", "meshlet_derp", "--http", "-a", "127.0.0.1:%d" % port, "--no-stun",
            "--metrics-addr", "", "--state-dir", str(tmp_path / "st"), "--event-loop", "asyncio"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"GET /derp/probe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    assert s.recv(100).startswith(b"HTTP/1.1 200 OK")
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "generated a new server key" in out and "serving http on 127.0.0.1:%d" % port in out
    assert "shutting down" in out


def test_port_in_use_is_one_line(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        args = ["--http", "-a", "127.0.0.1:%d" % port, "--no-stun", "--metrics-addr", "",
                "--state-dir", str(tmp_path / "st"), "--event-loop", "asyncio"]  # fmt: skip
        _fails(args, capsys, "another process has the port")
