"""Configuration: options over KUBEKVM_* variables over defaults, checked once."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig


def test_defaults_and_environment() -> None:
    config = AgentConfig.from_sources([], {"KUBEKVM_SERVER": "a:8000, b:8000",
                                           "KUBEKVM_HOST_NAME": "kvm-01",
                                           "KUBEKVM_HOST_TOKEN": "t",
                                           "KUBEKVM_GC_ORPHANS": "yes",
                                           "KUBEKVM_STOP_GRACE": "2.5"})
    assert config.servers == ("a:8000", "b:8000")
    assert config.host_name == "kvm-01"
    assert config.libvirt_uri == "qemu:///system"
    assert config.image_dir == Path("/var/lib/kubekvm/images")
    assert config.state_dir == Path("/var/lib/kubekvm/state")
    assert (config.domain_type, config.parallel, config.stop_grace) == ("auto", 16, 2.5)
    assert (config.resync_interval, config.heartbeat_interval) == (30.0, 10.0)
    assert config.libvirt_timeout == 60.0 and config.cpu_sample_interval == 60.0
    assert config.gc_orphans is True
    assert config.token == "t"


def test_options_win_over_the_environment() -> None:
    config = AgentConfig.from_sources(
        ["--server", "wss://s/graphql", "--host-name", "h", "--libvirt-uri", "test:///default",
         "--image-dir", "/img", "--state-dir", "/st", "--domain-type", "qemu", "--parallel",
         "3", "--stop-grace", "2", "--resync-interval", "5", "--heartbeat-interval", "1",
         "--gc-orphans", "--token", "x", "--libvirt-timeout", "7.5"],
        {"KUBEKVM_SERVER": "other", "KUBEKVM_PARALLEL": "9"},
    )
    assert config.servers == ("wss://s/graphql",)
    assert (config.libvirt_uri, config.domain_type, config.parallel) == (
        "test:///default", "qemu", 3)
    assert config.image_dir == Path("/img")
    assert config.gc_orphans and config.token == "x"
    assert config.libvirt_timeout == 7.5


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        ([], {}),
        (["--server", "s", "--parallel", "0"], {}),
        (["--server", "s"], {"KUBEKVM_PARALLEL": "many"}),
        (["--server", "s", "--domain-type", "xen"], {}),
        (["--server", "ftp://s"], {}),
        (["--server", "s", "--stop-grace", "-1"], {}),
        (["--server", "s"], {"KUBEKVM_LIBVIRT_TIMEOUT": "0"}),
        (["--server", "s"], {"KUBEKVM_GC_ORPHANS": "maybe"}),
    ],
)
def test_bad_settings_are_usage_errors(argv: list[str], environ: dict[str, str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        AgentConfig.from_sources(argv, environ)
    assert exited.value.code == 2
    assert "kubekvm-agent: error:" in capsys.readouterr().err


def test_token_file_is_read_at_each_connection(tmp_path: Path) -> None:
    token_file = tmp_path / "node-a"
    token_file.write_text("kk_first\n")
    config = AgentConfig.from_sources(["--server", "http://s", "--host-name", "h"],
                                      {"KUBEKVM_HOST_TOKEN_FILE": str(token_file)})
    assert config.current_token() == "kk_first"
    token_file.write_text("kk_rotated")
    assert config.current_token() == "kk_rotated"
    token_file.unlink()
    assert config.current_token() is None


async def test_health_endpoint_answers_on_loopback_only_by_default() -> None:
    import asyncio

    from agent.health import serve_health

    config = AgentConfig.from_sources(["--server", "http://s", "--host-name", "h", "--health-port", "0"], {})
    assert config.health_address == "127.0.0.1" and config.health_port == 0
    server = await serve_health(address=config.health_address, port=0)
    port = server.sockets[0].getsockname()[1]
    try:
        for path, status in (("/healthz", b"200"), ("/other", b"404")):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await writer.drain()
            assert status in await reader.readline()
            writer.close()
    finally:
        server.close()
