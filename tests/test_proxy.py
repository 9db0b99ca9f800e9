"""The registry proxy: containers on a run's internal network reach the package registries
through tinyproxy and nothing else.

The Docker tests send requests to the registries only (deb.debian.org, pypi.org,
files.pythonhosted.org), to the proxy, and to a port this test opens on this machine (which the
containers must not reach); the host they see refused is ``.invalid``, a name no resolver
knows, and the proxy refuses it before resolving it (its log says so).
"""

from __future__ import annotations

import io
import ipaddress
import os
import re
import socket
import tarfile
import threading
import time
from pathlib import Path

import pytest

from litecoder.errors import SandboxError
from litecoder.sandboxes.names import LABEL_RUN
from litecoder.sandboxes.proxy import (CHECK_HOST, LABEL_PROXY, RegistryProxy, apt_hosts, apt_source_files,
                                       container_name, default_allow_hosts, ensure_proxy_image, filter_rules,
                                       image_name, network_name, pip_config_files, remove_run_networks,
                                       tinyproxy_config)

REGISTRIES = ["deb.debian.org", "files.pythonhosted.org", "pypi.org", "registry.npmjs.org"]
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
CA_IN_BOX = "/etc/litecoder-host-ca.crt"


# --- which hosts, and the configuration (no engine) ------------------------------------------


@pytest.fixture
def apt_tree(tmp_path):
    sources_list = tmp_path / "sources.list"
    sources_list.write_text(
        "# deb http://commented.example.org/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://Mirror.Example.org/debian bookworm main\n"
        "deb-src https://src.example.net/debian bookworm main\n"
        "deb cdrom:[Debian GNU/Linux 12]/ bookworm main\n"
        "deb file:/srv/repo ./\n")
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (parts / "debian.sources").write_text(
        "Types: deb\n"
        "# http://snapshot.example.org/archive/debian/20250520T000000Z\n"
        "URIs: http://a.example.org/debian https://b.example.org:8443/debian\n"
        "Suites: bookworm\nComponents: main\n"
        "\n"
        "Types: deb\nURIs: http://off.example.org/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n")
    (parts / "extra.list").write_text("deb http://c.example.org/debian bookworm main\n")
    (parts / "google.list.disabled-by-farm").write_text("deb http://disabled.example.org/ stable main\n")
    (parts / "nodesource.sources.disabled").write_text("Types: deb\nURIs: https://disabled2.example.org/\n")
    (parts / "notes.txt").write_text("deb http://not-a-source.example.org/ stable main\n")
    return sources_list, parts


def test_apt_hosts_come_from_one_line_and_deb822_sources_and_disabled_files_are_skipped(apt_tree):
    files = apt_source_files(*apt_tree)
    assert [f.name for f in files] == ["sources.list", "debian.sources", "extra.list"]
    assert apt_hosts(files) == {"mirror.example.org", "src.example.net", "a.example.org", "b.example.org",
                                "c.example.org"}


def test_pip_indexes_name_their_hosts_and_pypi_stays_unless_an_http_index_replaces_it(tmp_path, apt_tree):
    no_apt: list[Path] = []
    local = tmp_path / "local.conf"
    local.write_text("[global]\nextra-index-url = file:///opt/pypi/simple file:///opt/more/simple\n"
                     "find-links = /opt/wheels\n")
    assert default_allow_hosts(no_apt, [local], {}) == sorted(["files.pythonhosted.org", "pypi.org",
                                                               "registry.npmjs.org"])
    mirror = tmp_path / "mirror.conf"
    mirror.write_text("[global]\nindex-url = https://pypi.mirror.example.com/simple\n"
                      "extra-index-url =\n    file:///opt/x\n    https://extra.example.com/simple\n"
                      "[install]\nextra_index_url = http://install.example.com/simple\n")
    env = {"PIP_EXTRA_INDEX_URL": "http://env.example.com/simple ftp://ftp.example.com/simple"}
    assert default_allow_hosts(no_apt, [local, mirror], env) == [
        "env.example.com", "extra.example.com", "install.example.com", "pypi.mirror.example.com",
        "registry.npmjs.org"]
    # a file:// index from the environment replaces the mirror, so PyPI is back
    hosts = default_allow_hosts(no_apt, [mirror], {"PIP_INDEX_URL": "file:///opt/pypi/simple"})
    assert {"pypi.org", "files.pythonhosted.org"} <= set(hosts) and "pypi.mirror.example.com" not in hosts
    # apt and pip together, sorted and unique; a missing or broken file is no host
    broken = tmp_path / "broken.conf"
    broken.write_text("index-url = https://no-section.example.com/\n")
    hosts = default_allow_hosts(apt_source_files(*apt_tree), [tmp_path / "missing.conf", broken, local],
                                {"PIP_EXTRA_INDEX_URL": "https://a.example.org/simple"})
    assert hosts == sorted(set(hosts)) and hosts.count("a.example.org") == 1
    assert {"mirror.example.org", "c.example.org", "pypi.org", "registry.npmjs.org"} <= set(hosts)


def test_pip_config_files_follow_pip(tmp_path):
    env = {"HOME": str(tmp_path), "PIP_CONFIG_FILE": str(tmp_path / "own.conf")}
    files = pip_config_files(env)
    assert files[0] == Path("/etc/xdg/pip/pip.conf") and Path("/etc/pip.conf") in files
    assert tmp_path / ".config/pip/pip.conf" in files and tmp_path / ".pip/pip.conf" in files
    assert files[-1] == tmp_path / "own.conf"
    assert pip_config_files({"PIP_CONFIG_FILE": os.devnull}) == []


def test_this_machines_defaults_hold_the_registries_it_uses():
    hosts = default_allow_hosts()
    assert hosts == sorted(set(hosts)) and "registry.npmjs.org" in hosts
    assert all(h == h.lower() and "/" not in h for h in hosts)


def test_the_filter_allows_exactly_the_hosts_and_the_config_denies_the_rest():
    assert filter_rules(["pypi.org", "deb.debian.org", "pypi.org"]) == (
        "^http://deb\\.debian\\.org(:80)?/\n^deb\\.debian\\.org:443$\n^http://pypi\\.org(:80)?/\n^pypi\\.org:443$\n")
    for bad in ["evil.example$|.*", "pypi.org/simple", "", "a b", "-x.org"]:
        with pytest.raises(SandboxError):
            filter_rules([bad])
    config = tinyproxy_config()
    for line in ["Port 8888", "FilterDefaultDeny Yes", "FilterURLs On", "FilterType ere", "ConnectPort 443"]:
        assert line in config.splitlines()
    assert image_name("sha256:" + "0" * 64, "b:1") != image_name("sha256:" + "1" * 64, "b:1")
    assert image_name("sha256:" + "0" * 64, "b:1").startswith("litecoder-proxy:")


# --- real containers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def client():
    import docker

    engine = docker.from_env(timeout=600)
    try:
        engine.ping()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"no Docker engine: {exc}; run `bash scripts/setup.sh`")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def base_image(client):
    """The default base image, built by the debootstrap builder if it is missing."""
    from omegaconf import OmegaConf

    from litecoder.config import register_configs
    from litecoder.plugins import get_plugins
    from litecoder.sandboxes.docker import DockerSandboxConfig
    from litecoder.sandboxes.base_image import ensure_base_image

    register_configs()
    config = OmegaConf.structured(DockerSandboxConfig)
    ensure_base_image(config, client, get_plugins().registry("image_builder"))
    return str(config.image)


@pytest.fixture(scope="module")
def proxy(client, base_image):
    run = f"test-proxy-{os.getpid()}"
    hosts = sorted(set(default_allow_hosts()) | set(REGISTRIES))
    began = time.monotonic()
    registry_proxy = RegistryProxy(client, run, base_image, hosts)
    registry_proxy.start()
    print(f"\nproxy up in {time.monotonic() - began:.2f}s: image {registry_proxy.image} "
          f"({'reused' if registry_proxy.image_reused else 'built'} in {registry_proxy.timings['image']:.2f}s), "
          f"network and container {registry_proxy.timings['start']:.2f}s")
    yield registry_proxy
    registry_proxy.stop()
    assert not client.networks.list(filters={"label": f"{LABEL_RUN}={run}"})


def start_box(client, image: str, network: str, run: str):
    """A sandbox-like container on ``network``, trusting the host's CA for pip (the machine's TLS)."""
    box = client.containers.run(image, ["sleep", "infinity"], detach=True, init=True, network=network,
                                labels={LABEL_RUN: run}, security_opt=["no-new-privileges"])
    data = HOST_CA.read_bytes() if HOST_CA.is_file() else b""
    if not data:
        return box
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(CA_IN_BOX.lstrip("/"))
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    box.put_archive("/", buffer.getvalue())
    return box


@pytest.fixture
def box(client, base_image, proxy):
    container = start_box(client, base_image, proxy.network, proxy.run_id)
    yield container
    container.remove(force=True)


def sh(client, container, command: str, env: dict[str, str] | None = None, timeout: int = 600) -> tuple[int, str]:
    """Run ``command`` with bash in ``container`` with a per-command environment, as sandboxes do."""
    exec_id = client.api.exec_create(container.id, ["timeout", str(timeout), "bash", "-c", command],
                                     environment=env or {}, stdout=True, stderr=True)["Id"]
    output = client.api.exec_start(exec_id).decode(errors="replace")
    return client.api.exec_inspect(exec_id)["ExitCode"], output


@pytest.fixture
def host_listener():
    """A TCP port listening on all of this machine's addresses; yields (port, connections seen)."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 0))
    server.listen(8)
    server.settimeout(0.2)
    seen: list[str] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                conn, peer = server.accept()
            except OSError:
                continue
            seen.append(peer[0])
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], seen
    done.set()
    thread.join(2)
    server.close()


@pytest.mark.docker
def test_the_network_reaches_neither_out_nor_the_host_and_apt_without_the_proxy_fails(client, proxy, box,
                                                                                      host_listener):
    network = client.networks.get(proxy.network)
    assert network.attrs["Internal"] is True and network.attrs["Labels"][LABEL_RUN] == proxy.run_id
    code, routes = sh(client, box, "cat /proc/net/route")
    assert code == 0
    rows = [line.split() for line in routes.splitlines()[1:] if line.strip()]
    default = [row for row in rows if row[1] == "00000000"]
    if int(client.version()["Version"].split(".")[0]) >= 25:
        assert not default, routes
    # Docker < 25 routes an internal network's containers to its gateway by default: that
    # address is on no interface of the host, so the route leads nowhere
    gateways = {config["Gateway"].split("/")[0] for config in network.attrs["IPAM"]["Config"] if config.get("Gateway")}
    gateways |= {socket.inet_ntoa(bytes.fromhex(row[2])[::-1]) for row in default}
    # the host: the default bridge's gateway, and what an unsealed internal bridge would hold
    # (an engine may leave the Gateway out of IPAM; it is then the subnet's first address)
    host = {config.get("Gateway") or str(next(ipaddress.ip_network(config["Subnet"]).hosts()))
            for config in client.networks.get("bridge").attrs["IPAM"]["Config"] if "Subnet" in config}
    port, seen = host_listener
    for address in sorted(gateways | host):
        code, output = sh(client, box, f"timeout 3 bash -c 'exec 3<>/dev/tcp/{address}/{port}' "
                                       "&& echo open || echo closed")
        assert output.strip().splitlines()[-1] == "closed", (address, output)
    assert seen == []
    # apt (bookworm's) only warns when it fetches no index; the install that follows fails.
    # (The engine's resolver answers no outside name here: one short try is enough to see it.)
    quick = {"RES_OPTIONS": "timeout:1 attempts:1"}
    code, output = sh(client, box, "apt-get -o Acquire::Retries=0 -o Acquire::http::Timeout=10 update", quick, 120)
    assert "Failed to fetch http://" in output and not re.search(r"^(Get|Hit):", output, re.M), output
    code, output = sh(client, box, "apt-get -o Acquire::Retries=0 -o Acquire::http::Timeout=10 install -y "
                                   "--no-install-recommends jq", quick, 120)
    assert code != 0 and ("Unable to locate package jq" in output or "Failed to fetch" in output), output


@pytest.mark.docker
def test_apt_and_pip_install_through_the_proxy(client, proxy, box):
    env = proxy.env()
    began = time.monotonic()
    code, output = sh(client, box, "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "
                                   "--no-install-recommends jq && echo '{\"a\": [1, 2]}' | jq -c '.a'", env)
    assert code == 0, output[-3000:]
    assert output.strip().splitlines()[-1] == "[1,2]"
    apt_s = time.monotonic() - began
    began = time.monotonic()
    code, output = sh(client, box, "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
                                   "python3-pip >/dev/null && python3 -m pip install --break-system-packages six "
                                   "&& python3 -c 'import six; print(six.__version__)'",
                      {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1",
                       **({"PIP_CERT": CA_IN_BOX} if HOST_CA.is_file() else {})})
    assert code == 0, output[-3000:]
    assert "Successfully installed six" in output
    print(f"\napt update + jq {apt_s:.1f}s; python3-pip + six {time.monotonic() - began:.1f}s")
    logs = proxy.logs()
    for host in ("deb.debian.org", "pypi.org", "files.pythonhosted.org"):
        assert f'Established connection to host "{host}"' in logs, host
    # the settings were the command's, not the container's
    code, output = sh(client, box, "env | grep -i _proxy || true")
    assert output.strip() == ""


@pytest.mark.docker
def test_a_host_not_on_the_list_gets_tinyproxys_403_and_is_never_resolved(client, proxy, box):
    code, output = sh(client, box, f"curl -s -o /tmp/body -w '%{{http_code}}' -x {proxy.url} http://{CHECK_HOST}/; "
                                   "echo; cat /tmp/body")
    status, _, body = output.partition("\n")
    assert status == "403", output
    assert "Filtered" in body and "tinyproxy" in body.lower(), body
    # HTTPS: the CONNECT is refused alike, and a registry on a port other than 443 too
    code, output = sh(client, box, f"curl -s -o /dev/null -w '%{{http_connect}}' -x {proxy.url} https://{CHECK_HOST}/")
    assert output.strip() == "403", output
    code, output = sh(client, box, f"curl -s -o /dev/null -w '%{{http_connect}}' -x {proxy.url} https://pypi.org:8443/")
    assert output.strip() == "403", output
    # plain HTTP to a registry on another port than 80 is refused by the filter, not forwarded
    code, output = sh(client, box, f"curl -s -o /dev/null -w '%{{http_code}}' -x {proxy.url} http://pypi.org:22/")
    assert output.strip() == "403", output
    logs = proxy.logs()
    mentions = [line for line in logs.splitlines() if CHECK_HOST in line]
    assert any("refused on filtered url" in line for line in mentions), logs[-2000:]
    assert 'refused on filtered url "http://pypi.org:22/"' in logs, logs[-2000:]
    # tinyproxy never looked the host up nor opened a connection to it
    assert not [line for line in mentions if "opensock" in line or "getaddrinfo" in line
                or "Established" in line], mentions
    assert "Refused CONNECT method on port 8443" in logs


@pytest.mark.docker
def test_stop_removes_the_proxy_and_network_and_leftovers_of_a_killed_run_are_cleaned(client, base_image, proxy):
    import docker

    run = f"test-proxy-left-{os.getpid()}"
    label = f"{LABEL_RUN}={run}"

    def what_is_left() -> tuple[list, list]:
        return (client.api.containers(all=True, filters={"label": [label, LABEL_PROXY]}),
                client.networks.list(filters={"label": label}))

    killed = RegistryProxy(client, run, base_image, REGISTRIES)
    killed.start()  # and never stopped: the run was killed
    box = start_box(client, base_image, killed.network, run)
    try:
        # the same run starting again clears what it left and comes up
        again = RegistryProxy(client, run, base_image, REGISTRIES)
        again.start()
        assert [n.name for n in what_is_left()[1]] == [network_name(run)]
        again.stop()
        again.stop()  # idempotent
        assert what_is_left() == ([], [])

        killed = RegistryProxy(client, run, base_image, REGISTRIES)
        killed.start()
        client.networks.get(killed.network).connect(box)
        assert remove_run_networks(client, run) == 2  # the proxy and the network
        assert what_is_left() == ([], [])
        with pytest.raises(docker.errors.NotFound):
            client.containers.get(container_name(run))
        box.reload()  # the run's other containers stay (the sandbox removes them), off the network
        assert network_name(run) not in box.attrs["NetworkSettings"]["Networks"]
        assert remove_run_networks(client, run) == 0
        killed.stop()  # gone already: no error
    finally:
        box.remove(force=True)
        remove_run_networks(client, run)
    # the module's proxy is untouched by another run's cleanup
    assert client.containers.get(container_name(proxy.run_id)).status == "running"


@pytest.mark.docker
def test_the_image_is_reused_and_a_missing_base_or_a_dead_proxy_is_one_line(client, base_image, proxy, monkeypatch):
    import litecoder.sandboxes.proxy as module

    began = time.monotonic()
    assert ensure_proxy_image(client, base_image) == (proxy.image, True)
    assert time.monotonic() - began < 5
    with pytest.raises(SandboxError, match="base image litecoder-no-such-image:x is missing"):
        ensure_proxy_image(client, "litecoder-no-such-image:x")
    # a configuration tinyproxy rejects: it exits, and start() says so and leaves nothing
    original = module.tinyproxy_config
    monkeypatch.setattr(module, "tinyproxy_config", lambda: original() + "NoSuchDirective yes\n")
    broken = RegistryProxy(client, f"test-proxy-bad-{os.getpid()}", base_image, REGISTRIES, ready_timeout=10)
    with pytest.raises(SandboxError, match="exited: .*Unable to parse config file") as caught:
        broken.start()
    assert "\n" not in str(caught.value)
    assert not client.networks.list(filters={"label": f"{LABEL_RUN}={broken.run_id}"})
    assert not client.api.containers(all=True, filters={"name": container_name(broken.run_id)})


@pytest.mark.docker
def test_an_image_that_cannot_be_built_is_one_line(client, base_image, monkeypatch):
    import litecoder.sandboxes.proxy as module

    monkeypatch.setattr(module, "DOCKERFILE", module.DOCKERFILE.replace("tinyproxy-bin", "litecoder-no-such-package"))
    with pytest.raises(SandboxError, match=r"proxy image litecoder-proxy:\w{12} could not be built: "
                                           r"E: Unable to locate package litecoder-no-such-package") as caught:
        ensure_proxy_image(client, base_image)
    assert "\n" not in str(caught.value)
