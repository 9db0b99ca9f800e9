"""The package registries, and nothing else, for sandbox containers: an allowlist proxy.

A run that lets its containers install packages gets a Docker network of its own, created
``internal`` (the engine drops what leaves its subnet), and one proxy container, Debian's
``tinyproxy``, on both that network (as ``litecoder-proxy``) and the default bridge. The
proxy forwards plain HTTP and HTTPS ``CONNECT`` (port 443 only) to the allowed hosts and
answers every other host with its own 403 "Filtered" page, without resolving or contacting it.
Containers on the network reach nothing but the proxy; their commands get its address as
``http_proxy``/``https_proxy`` (``RegistryProxy.env``), per command, so a committed image
keeps none of it.

The network's bridge gets no address on the host (``inhibit_ipv4``). An internal network's
bridge otherwise holds the network's gateway address, and through it containers reach every
host service listening on it or on all addresses; Docker before 25 even gives them a default
route there. With no such address that route leads nowhere.

The allowed hosts default to the registries this machine itself uses (``default_allow_hosts``):
its apt mirrors, its pip indexes (PyPI unless an index replaces it) and npm's registry.
The proxy's image is Debian's ``tinyproxy-bin`` (the program without its service) on the
sandbox base image, tagged by a hash of its recipe and reused; its configuration is written
into each container, so one image serves any list of hosts.
"""

from __future__ import annotations

import configparser
import hashlib
import logging
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping
from urllib.parse import urlsplit

from ..errors import SandboxError
from .names import LABEL_RUN
from .base_image import apt_source_files, apt_uris, build_from_files, tar_files
from .toolchain import HOST_CA_BUNDLE

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container
    from docker.models.networks import Network

log = logging.getLogger(__name__)

PROXY_IMAGES = "litecoder-proxy"
#: marks what a proxy makes (``container`` or ``network``), beside the run's label
LABEL_PROXY = "litecoder.proxy"
#: the proxy's name on the run's network, and its port
ALIAS = "litecoder-proxy"
PORT = 8888
NETWORK_PREFIX = "litecoder-net-"
#: the bridge driver's options for the run's network: no host address on its bridge
NETWORK_OPTIONS = {"com.docker.network.bridge.inhibit_ipv4": "true"}
CONTAINER_PREFIX = "litecoder-proxy-"
CONFIG_DIR = "/etc/litecoder-proxy"
#: a host no resolver knows (RFC 6761), asked for to see the proxy refuse it
CHECK_HOST = "litecoder-check.invalid"
NPM_REGISTRY = "registry.npmjs.org"
PYPI_HOSTS = ("pypi.org", "files.pythonhosted.org")
#: pip's configuration files, lowest precedence first (``PIP_CONFIG_FILE`` comes last)
PIP_CONFIG_FILES = (Path("/etc/xdg/pip/pip.conf"), Path("/etc/pip.conf"), Path("~/.pip/pip.conf"),
                    Path("~/.config/pip/pip.conf"))
HOST_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*$")

DOCKERFILE = f"""\
FROM {{base}}
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tinyproxy-bin \\
 && apt-get clean && rm -rf /var/lib/apt/lists/* && mkdir -p {CONFIG_DIR}
USER nobody:nogroup
CMD ["tinyproxy", "-d", "-c", "{CONFIG_DIR}/tinyproxy.conf"]
"""


def dockerfile(base: str) -> str:
    return DOCKERFILE.format(base=base)


def image_name(base_image_id: str, base: str) -> str:
    """``litecoder-proxy:<hash of the base image's id and the Dockerfile>``."""
    recipe = f"{base_image_id}\n{dockerfile(base)}"
    return f"{PROXY_IMAGES}:{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def tinyproxy_config() -> str:
    """Port 8888, request URLs matched against the filter file (deny the rest), CONNECT to
    443 only."""
    return "\n".join([
        "# litecoder: the package registries in the filter file, nothing else",
        f"Port {PORT}",
        "Timeout 600",
        "MaxClients 100",
        "LogLevel Info",
        "DisableViaHeader Yes",
        'DefaultErrorFile "/usr/share/tinyproxy/default.html"',
        f'Filter "{CONFIG_DIR}/filter"',
        "FilterType ere",
        "FilterURLs On",
        "FilterCaseSensitive Off",
        "FilterDefaultDeny Yes",
        "ConnectPort 443",
    ]) + "\n"


def filter_rules(hosts: Iterable[str]) -> str:
    """Two anchored regexes per host, for the URLs tinyproxy filters: plain HTTP on port 80
    (``http://host/...``) and HTTPS through ``CONNECT host:443``; exactly that name, none of
    its subdomains, no other port."""
    rules = []
    for host in sorted(set(hosts)):
        if not HOST_NAME.match(host):
            raise SandboxError(f"proxy: {host!r} is not a host name; list names such as pypi.org")
        name = host.replace(".", r"\.")
        rules += [f"^http://{name}(:80)?/", f"^{name}:443$"]
    return "\n".join(rules) + "\n"


def _normal_hosts(hosts: Iterable[str]) -> list[str]:
    return sorted({str(h).strip().lower().rstrip(".") for h in hosts if str(h).strip()})


# --- the hosts this machine's package managers use ----------------------------------------


def _http_host(uri: str) -> str | None:
    try:
        parts = urlsplit(uri.strip())
        host = parts.hostname
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not host:
        return None
    return host.lower().rstrip(".")


def apt_hosts(files: Iterable[Path]) -> set[str]:
    """Hosts (http and https) of the URIs in apt's source files."""
    return {h for uri in apt_uris(files) if (h := _http_host(uri))}


def pip_config_files(environ: Mapping[str, str]) -> list[Path]:
    """pip's configuration files in the order pip reads them (later ones win); none when
    ``PIP_CONFIG_FILE`` is ``os.devnull``, as for pip."""
    named = environ.get("PIP_CONFIG_FILE")
    if named == os.devnull:
        return []
    home = environ.get("HOME")
    files = [Path(str(p).replace("~", home, 1)) if home and str(p).startswith("~") else p.expanduser()
             for p in PIP_CONFIG_FILES]
    return files + ([Path(named)] if named else [])


def pip_hosts(files: Iterable[Path], environ: Mapping[str, str]) -> set[str]:
    """Hosts of pip's ``index-url`` and ``extra-index-url`` (files, then ``PIP_INDEX_URL`` and
    ``PIP_EXTRA_INDEX_URL``), http(s) only; PyPI's hosts unless an http(s) index replaces PyPI."""
    index: str | None = None
    extras: list[str] = []
    for path in files:
        parser = configparser.RawConfigParser(strict=False)
        try:
            parser.read(path)
        except (OSError, configparser.Error, UnicodeDecodeError) as exc:
            log.debug("pip configuration %s: %s", path, exc)
            continue
        for section in ("global", "install", "download"):
            if not parser.has_section(section):
                continue
            for key, value in parser.items(section):
                name = key.replace("_", "-")
                if name == "index-url" and value.strip():
                    index = value.strip()
                elif name == "extra-index-url":
                    extras += value.split()
    if environ.get("PIP_INDEX_URL", "").strip():
        index = environ["PIP_INDEX_URL"].strip()
    extras += environ.get("PIP_EXTRA_INDEX_URL", "").split()
    hosts = {h for uri in extras if (h := _http_host(uri))}
    index_host = _http_host(index) if index else None
    if index_host:
        hosts.add(index_host)
    else:
        hosts.update(PYPI_HOSTS)
    return hosts


def default_allow_hosts(apt_sources: Iterable[Path] | None = None, pip_configs: Iterable[Path] | None = None,
                        environ: Mapping[str, str] | None = None) -> list[str]:
    """The registries this machine uses: its apt mirrors, its pip indexes (PyPI's two hosts
    unless an http(s) ``index-url`` replaces them) and npm's registry; sorted, unique.

    ``apt_sources`` (files), ``pip_configs`` (files) and ``environ`` default to this machine's."""
    environ = os.environ if environ is None else environ
    apt = apt_source_files() if apt_sources is None else list(apt_sources)
    pip = pip_config_files(environ) if pip_configs is None else list(pip_configs)
    return _normal_hosts(apt_hosts(apt) | pip_hosts(pip, environ) | {NPM_REGISTRY})


# --- the image ---------------------------------------------------------------------------


def ensure_proxy_image(client: DockerClient, base: str, timeout: float = 600) -> tuple[str, bool]:
    """The proxy image on ``base``, built from Debian's ``tinyproxy-bin`` unless it exists: (name, reused)."""
    import docker

    try:
        base_id = client.images.get(base).id
    except docker.errors.ImageNotFound:
        raise SandboxError(f"proxy: the base image {base} is missing; build it first (sandbox.builder)") from None
    image = image_name(base_id, base)
    try:
        client.images.get(image)
        return image, True
    except docker.errors.ImageNotFound:
        pass
    log.info("building %s (tinyproxy on %s)", image, base)
    ca = HOST_CA_BUNDLE.read_bytes() if HOST_CA_BUNDLE.is_file() else b""
    try:
        output = build_from_files(client, image, {"Dockerfile": dockerfile(base).encode(), "ca-certificates.crt": ca},
                                  labels={LABEL_PROXY: "image"}, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - engine errors and read timeouts alike
        output = f"{type(exc).__name__}: {exc}"
    if output is not None:
        lines = output.splitlines()
        context_lines = [line.strip() for line in lines if line.strip().startswith(("E:", "Err:"))][-2:]
        last = lines[-1].strip() if output.strip() else "no output"
        last = re.sub(r"^The command '.*' returned a non-zero code: (\d+)$", r"the install step exited \1", last)
        detail = " | ".join([*context_lines, last])
        raise SandboxError(f"proxy image {image} could not be built: {detail[:400]}")
    return image, False


# --- the proxy ---------------------------------------------------------------------------


def network_name(run_id: str) -> str:
    return f"{NETWORK_PREFIX}{run_id}"


def container_name(run_id: str) -> str:
    return f"{CONTAINER_PREFIX}{run_id}"


class RegistryProxy:
    """The run's internal network and its allowlist proxy.

    ``start()`` builds (or reuses) the image, creates the network and the proxy and waits until
    the proxy refuses a host it must refuse; containers then join ``network`` and get ``env()``
    in their commands' environment. ``stop()`` removes both; so does ``remove_run_networks``
    for a run that was killed.
    """

    def __init__(self, client: DockerClient, run_id: str, base_image: str, allow_hosts: list[str], timeout: float = 600,
                 ready_timeout: float = 60) -> None:
        self.client = client
        self.run_id = run_id
        self.base_image = base_image
        self.allow_hosts = _normal_hosts(allow_hosts)
        self.timeout = timeout
        self.ready_timeout = ready_timeout
        self.network = network_name(run_id)
        self.url = f"http://{ALIAS}:{PORT}"
        self.image: str | None = None
        #: seconds spent: ``image`` (build or look-up), ``start`` (network, container, ready)
        self.timings: dict[str, float] = {}
        self.image_reused: bool | None = None
        self._container: Container | None = None
        self._network: Network | None = None
        self._stopped = False

    def __enter__(self) -> "RegistryProxy":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def labels(self) -> dict[str, str]:
        return {LABEL_RUN: self.run_id}

    def env(self) -> dict[str, str]:
        """The environment a command on the network needs to reach the registries."""
        return {"http_proxy": self.url, "https_proxy": self.url, "HTTP_PROXY": self.url, "HTTPS_PROXY": self.url,
                "no_proxy": "localhost,127.0.0.1", "NO_PROXY": "localhost,127.0.0.1"}

    def start(self) -> None:
        if not self.allow_hosts:
            raise SandboxError("proxy: no registries to allow; list them in sandbox.registries")
        rules = filter_rules(self.allow_hosts)
        began = time.monotonic()
        self.image, self.image_reused = ensure_proxy_image(self.client, self.base_image, self.timeout)
        self.timings["image"] = time.monotonic() - began
        began = time.monotonic()
        left = remove_run_networks(self.client, self.run_id)
        if left:
            log.warning("removed %d proxy networks/containers a previous attempt of run %s left behind", left,
                        self.run_id)
        self._stopped = False
        try:
            self._network = self.client.networks.create(
                self.network, driver="bridge", internal=True, check_duplicate=True, options=NETWORK_OPTIONS,
                labels={**self.labels, LABEL_PROXY: "network"})
            self._container = self.client.containers.create(
                self.image, name=container_name(self.run_id), detach=True, network="bridge",
                labels={**self.labels, LABEL_PROXY: "container"}, cap_drop=["ALL"], security_opt=["no-new-privileges"],
                mem_limit="256m", pids_limit=256, hostname=ALIAS)
            self._container.put_archive("/", tar_files({
                f"{CONFIG_DIR.lstrip('/')}/tinyproxy.conf": tinyproxy_config().encode(),
                f"{CONFIG_DIR.lstrip('/')}/filter": rules.encode()}))
            self._container.start()
            self._network.connect(self._container, aliases=[ALIAS])
        except SandboxError:
            self.stop()
            raise
        except Exception as exc:  # noqa: BLE001 - any engine error means no proxy
            self.stop()
            raise SandboxError(f"proxy for run {self.run_id} could not be started: {exc}") from exc
        self._wait_ready()
        self.timings["start"] = time.monotonic() - began
        log.info("registry proxy %s on network %s: %s (%.1fs)", container_name(self.run_id), self.network,
                 ", ".join(self.allow_hosts), self.timings["start"])

    def _wait_ready(self) -> None:
        """Until tinyproxy answers a request for ``CHECK_HOST`` with its 403 (asked inside its own
        container, over loopback: nothing leaves it)."""
        probe = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                 "-x", f"http://127.0.0.1:{PORT}", f"http://{CHECK_HOST}/"]
        deadline = time.monotonic() + self.ready_timeout
        answer, exited = "", False
        container = self._container
        if container is None:
            raise SandboxError(f"proxy for run {self.run_id} was not started")
        while time.monotonic() < deadline:
            try:
                container.reload()
                if container.status not in ("created", "running"):
                    exited = True
                    break
                code, output = container.exec_run(probe)
                answer = output.decode(errors="replace").strip()
                if answer == "403":
                    return
            except Exception as exc:  # noqa: BLE001 - keep asking until the deadline
                answer = str(exc)
            time.sleep(0.2)
        logs = self._logs()
        self.stop()
        what = "exited" if exited else f"did not come up within {self.ready_timeout:.0f}s"
        reason = logs or (f"it answered {answer!r}" if answer else "no answer")
        raise SandboxError(f"proxy for run {self.run_id} {what}: {reason[:300]}")

    def _logs(self) -> str:
        if self._container is None:
            return ""
        try:
            text = self._container.logs(tail=5).decode(errors="replace")
        except Exception:  # noqa: BLE001
            return ""
        return " | ".join(line.strip() for line in text.splitlines() if line.strip())

    def logs(self) -> str:
        """What tinyproxy logged (requests refused and connections made), for diagnosis."""
        if self._container is None:
            return ""
        try:
            return self._container.logs().decode(errors="replace")
        except Exception:  # noqa: BLE001
            return ""

    def stop(self) -> None:
        """Remove the proxy and the network; containers still on it are disconnected first.
        What is already gone is fine."""
        if self._stopped:
            return
        self._stopped = True
        _remove_container(self.client, container_name(self.run_id))
        _remove_network(self.client, self.network)
        self._container = self._network = None


def _remove_container(client: DockerClient, name_or_id: str) -> bool:
    import docker

    try:
        client.api.remove_container(name_or_id, force=True)
        return True
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as exc:
        if "already in progress" in str(exc) or "No such container" in str(exc):
            return False
        log.warning("could not remove proxy container %s: %s", name_or_id, exc)
        return False


def _remove_network(client: DockerClient, name_or_id: str) -> bool:
    import docker

    try:
        network = client.networks.get(name_or_id)
    except docker.errors.NotFound:
        return False
    try:
        network.reload()
        for container_id in (network.attrs.get("Containers") or {}):
            try:
                client.api.disconnect_container_from_network(container_id, network.id, force=True)
            except docker.errors.APIError as exc:
                log.debug("disconnecting %s from %s: %s", container_id[:12], network.name, exc)
        network.remove()
        return True
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as exc:
        log.warning("could not remove network %s: %s", network.name, exc)
        return False


def remove_run_networks(client: DockerClient, run_id: str) -> int:
    """Remove the proxy container and network a run left behind (killed, say), found by the
    run's label; how many were removed."""
    removed = 0
    label = f"{LABEL_RUN}={run_id}"
    try:
        containers = client.api.containers(all=True, filters={"label": [label, LABEL_PROXY]})
    except Exception as exc:  # noqa: BLE001 - an engine that cannot list has nothing to clean
        log.warning("listing proxy containers of run %s: %s", run_id, exc)
        containers = []
    for entry in containers:
        removed += _remove_container(client, entry["Id"])
    try:
        networks = client.networks.list(filters={"label": label})
    except Exception as exc:  # noqa: BLE001
        log.warning("listing networks of run %s: %s", run_id, exc)
        networks = []
    for network in networks:
        removed += _remove_network(client, network.id)
    return removed
