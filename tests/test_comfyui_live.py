"""The pack inside real, headless ComfyUI hosts (CPU): every test runs once per host. Skipped without a host.

    COMFYUI_HOSTS=/tmp/comfy-0.3.64:/tmp/comfy-0.33.0 pytest -q tests/test_comfyui_live.py
    COMFYUI_DIR=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/venv/bin/python pytest -q tests/test_comfyui_live.py

``COMFYUI_HOSTS`` lists folders made by ``shared/tools/comfyhost/install_host.sh DEST [--version V] --ui``
(``DEST/ComfyUI``, its Python ``DEST/venv/bin/python``, playwright-core in ``DEST/ui/node_modules``), separated by
``os.pathsep``; ``.ci/run`` gives the oldest and the newest supported host (0.3.64 and 0.33.0). Without it,
``COMFYUI_DIR`` is one ComfyUI checkout and ``COMFYUI_PYTHON`` a Python with ComfyUI's requirements and this
pack's (default: the one running pytest). Each host's version is read from its ``comfyui_version.py``; the tests
that compare ``tests/comfy_stubs.py`` with the real server use the stubs' profile of that version
(``comfy_stubs.HOSTS``). Each server gets a scratch base directory (``--base-directory``) holding a symlink to
this pack in ``custom_nodes/``, a tiny random TWGTM checkpoint under the example file name in ``models/twgtm/``
and the example inputs in ``input/``. Unless ``OMP_NUM_THREADS`` is set, the server runs single-threaded (the
tiny model is fastest that way).

The frontend check (``test_ui_workflow_loads_in_the_real_frontend``) also needs Node.js, Chromium
(``CHROMIUM``, default: ``chromium`` on PATH), playwright-core (the host's ``ui/node_modules``, else
``NODE_PATH``) and ``ui_check.js`` from ``COMFYHOST`` (``install_host.sh DEST --ui`` provides all of them;
``source DEST/env.sh`` sets the variables). Every test here is marked ``comfyui``; with
``TWGTM_REQUIRE_COMFYUI=1`` (set by ``.ci/run``) a skip is a failure, and the hosts must be exactly the
versions the stubs have profiles of.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_stubs  # noqa: E402
from ci_guard import comfyui_required  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Host:
    """One ComfyUI to run the pack in."""

    version: str          # from its comfyui_version.py
    comfyui_dir: Path     # the checkout (main.py)
    python: str           # its Python
    node_path: str        # where playwright-core is found ("" for NODE_PATH)

    @property
    def profile(self) -> comfy_stubs.HostProfile | None:
        """The stubs' profile of this version, if they have one."""
        return comfy_stubs.HOSTS.get(self.version)


def _version(comfyui_dir: Path) -> str:
    text = (comfyui_dir / "comfyui_version.py").read_text()
    match = re.search(r"__version__\s*=\s*[\"']([^\"']+)[\"']", text)
    assert match, f"no __version__ in {comfyui_dir / 'comfyui_version.py'}"
    return match.group(1)


def configured_hosts() -> list[Host]:
    """The hosts of ``COMFYUI_HOSTS`` (install_host.sh folders), else the one of ``COMFYUI_DIR``, else none."""
    hosts = []
    for dest in filter(None, os.environ.get("COMFYUI_HOSTS", "").split(os.pathsep)):
        dest = Path(dest)
        node_modules = dest / "ui" / "node_modules"
        hosts.append(Host(_version(dest / "ComfyUI"), dest / "ComfyUI", str(dest / "venv" / "bin" / "python"),
                          str(node_modules) if node_modules.is_dir() else ""))
    if not hosts and os.environ.get("COMFYUI_DIR"):
        comfyui_dir = Path(os.environ["COMFYUI_DIR"])
        hosts.append(Host(_version(comfyui_dir), comfyui_dir, os.environ.get("COMFYUI_PYTHON", sys.executable), ""))
    return hosts


HOSTS = configured_hosts()
pytestmark = [pytest.mark.comfyui,
              pytest.mark.skipif(not HOSTS, reason="set COMFYUI_HOSTS (install_host.sh folders) or COMFYUI_DIR to "
                                                   "a ComfyUI checkout to run these tests")]

WORKFLOWS = comfy_stubs.PACK_ROOT / "workflows"
INPUTS = WORKFLOWS / "example_inputs"
NAMES = ["twgtm_try_on", "twgtm_try_off", "twgtm_round_trip"]
UI_NAMES = sorted(p.stem for p in WORKFLOWS.glob("*.json") if not p.stem.endswith("_api"))  # every UI workflow
PACK_LINK = "ComfyUI-TWGTM"
EXAMPLE_CHECKPOINT = "twgtm_synthetic_tiny.safetensors"  # nodes/loader.py EXAMPLE_CHECKPOINT
NOT_TWGTM = "sd15_inpainting.safetensors"


@pytest.fixture(scope="module", params=HOSTS, ids=lambda h: f"comfyui-{h.version}")
def host(request) -> Host:
    return request.param


def profile_of(host: Host) -> comfy_stubs.HostProfile:
    if host.profile is None:
        pytest.skip(f"tests/comfy_stubs.py has no profile of ComfyUI {host.version} (HOSTS: {sorted(comfy_stubs.HOSTS)})")
    return host.profile


def test_the_hosts_are_the_oldest_and_newest_supported():
    """In CI (TWGTM_REQUIRE_COMFYUI=1) the live suite runs on exactly the hosts the stubs have profiles of:
    ComfyUI 0.3.64, the oldest the pack supports, and 0.33.0, the newest that runs here."""
    if not comfyui_required():
        pytest.skip("checked in CI only (TWGTM_REQUIRE_COMFYUI=1)")
    assert sorted(h.version for h in HOSTS) == sorted(comfy_stubs.HOSTS), [h.version for h in HOSTS]


# ----------------------------------------------------------------------------- server
def _http(method: str, url: str, body=None, timeout: float = 30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")


class Server:
    def __init__(self, host: Host, base: Path, url: str, proc: subprocess.Popen, log: Path):
        self.host, self.base, self.url, self.proc, self.log = host, base, url, proc, log

    def get(self, path: str):
        return _http("GET", self.url + path)

    def submit(self, prompt: dict):
        return _http("POST", self.url + "/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, "ComfyUI died:\n" + self.log.read_text()[-4000:]
            status, hist = self.get(f"/history/{prompt_id}")
            if status == 200 and prompt_id in hist and hist[prompt_id]["status"].get("completed") is not None:
                return hist[prompt_id]
            time.sleep(0.25)
        _http("POST", self.url + "/interrupt", {})
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")

    def run(self, prompt: dict, timeout: float = 600) -> dict:
        status, resp = self.submit(prompt)
        assert status == 200, f"/prompt rejected the workflow: {json.dumps(resp, indent=1)[:3000]}"
        return self.wait(resp["prompt_id"], timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_models(base: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from twgtm.config import TWGTMConfig
    from twgtm.components import TWGTMComponents
    from twgtm.weights import save_twgtm

    torch.manual_seed(0)
    save_twgtm(TWGTMComponents.build(TWGTMConfig.tiny(), random_prompts=True), base / "models" / "twgtm" / EXAMPLE_CHECKPOINT,
               include_base=True)
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 9, 3, 3)},
              str(base / "models" / "twgtm" / NOT_TWGTM))


def _base_dir(tmp_path_factory, name: str) -> Path:
    """A scratch ``--base-directory``: the pack linked in custom_nodes/, the example inputs, the model files."""
    base = tmp_path_factory.mktemp(name)
    for sub in ("custom_nodes", "input", "output", "temp", "user", "models/twgtm"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "custom_nodes" / PACK_LINK).symlink_to(comfy_stubs.PACK_ROOT, target_is_directory=True)
    for png in INPUTS.glob("*.png"):
        (base / "input" / png.name).write_bytes(png.read_bytes())
    _make_models(base)
    return base


@contextlib.contextmanager
def _running_server(host: Host, base: Path, entry: list[str]):
    """Start ``host`` (``entry``: how its Python starts main.py) on a free loopback port with ``base``; wait until
    it answers, yield the :class:`Server`, and stop it (SIGINT, then kill) afterwards."""
    port, log = _free_port(), base / "server.log"
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [host.python, *entry, "--cpu", "--listen", "127.0.0.1",
           "--port", str(port), "--base-directory", str(base), "--disable-auto-launch",
           "--database-url", "sqlite:///:memory:"]
    with open(log, "w") as logf:
        proc = subprocess.Popen(cmd, cwd=host.comfyui_dir, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    srv = Server(host, base, f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.time() + 240
        while True:
            assert proc.poll() is None, "ComfyUI exited during start-up:\n" + log.read_text()[-4000:]
            try:
                if srv.get("/system_stats")[0] == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline, "ComfyUI did not start:\n" + log.read_text()[-4000:]
            time.sleep(0.5)
        yield srv
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def server(host, tmp_path_factory):
    with _running_server(host, _base_dir(tmp_path_factory, f"comfyui_base_{host.version}"), ["main.py"]) as srv:
        yield srv


@pytest.fixture(scope="module")
def info(server) -> dict:
    status, data = server.get("/object_info")
    assert status == 200
    return data


def load(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def saved_files(server: Server, entry: dict) -> dict[str, list[Path]]:
    out = {}
    for node_id, outputs in entry.get("outputs", {}).items():
        out[node_id] = [server.base / it["type"] / it["subfolder"] / it["filename"] for it in outputs.get("images", [])]
    return out


# ----------------------------------------------------------------------------- frontend
def _frontend_tools(host: Host) -> tuple[str, str, Path, str]:
    """node, chromium, ui_check.js and the NODE_PATH with playwright-core (the host's ``ui/node_modules``, else
    ``NODE_PATH``), or a skip that names what is missing."""
    node = shutil.which("node")
    chromium = shutil.which(os.environ.get("CHROMIUM", "chromium"))
    tools = os.environ.get("COMFYHOST")
    script = Path(tools) / "ui_check.js" if tools else None
    node_path = [p for p in [host.node_path, *os.environ.get("NODE_PATH", "").split(os.pathsep)] if p]
    missing = [what for what, ok in [
        ("node on PATH", node), ("chromium (set CHROMIUM or put it on PATH)", chromium),
        ("COMFYHOST with ui_check.js", script and script.is_file()),
        ("playwright-core in the host's ui/node_modules or on NODE_PATH",
         any((Path(p) / "playwright-core").is_dir() for p in node_path)),
    ] if not ok]
    if missing:
        pytest.skip("frontend check needs " + ", ".join(missing) + " (install_host.sh DEST --ui; source DEST/env.sh)")
    return node, chromium, script, os.pathsep.join(node_path)


@pytest.mark.parametrize("name", UI_NAMES)
def test_ui_workflow_loads_in_the_real_frontend(server, name, tmp_path):
    """The shipped UI workflow in the host's own frontend (headless Chromium): every node type known, no load or
    page errors, and the frontend's API export is the shipped ``*_api.json`` twin."""
    node, chromium, script, node_path = _frontend_tools(server.host)
    api_out = tmp_path / "api.json"
    proc = subprocess.run([node, str(script), "--url", server.url, "--workflow", str(WORKFLOWS / f"{name}.json"),
                           "--chromium", chromium, "--api-out", str(api_out), "--timeout-ms", "120000"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, NODE_PATH=node_path))
    assert proc.returncode == 0, f"ui_check.js exit {proc.returncode}:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout)
    assert report["missing"] == [] and report["placeholders"] == [] and report["loadError"] is None, report
    assert json.loads(api_out.read_text()) == load(f"{name}_api")


# ----------------------------------------------------------------------------- tests
def test_pack_imports_and_its_nodes_are_listed(server, info):
    log = server.log.read_text()
    assert not [ln for ln in log.splitlines() if "IMPORT FAILED" in ln and PACK_LINK in ln], log[-4000:]
    ours = {k: v for k, v in info.items() if k.startswith("TWGTM")}
    assert set(ours) == {"TWGTMModelLoader", "TWGTMTryOnConditioning", "TWGTMTryOffConditioning", "TWGTMGarmentMask",
                         "TWGTMSampler", "TWGTMMaskToBox"}
    for name, node in ours.items():
        for cat in ("required", "optional"):
            for inp, spec in node["input"].get(cat, {}).items():
                assert spec[1].get("tooltip"), f"{name}.{inp} has no tooltip"
    options = ours["TWGTMModelLoader"]["input"]["required"]["twgtm_file"][1]["options"]
    assert options == sorted([EXAMPLE_CHECKPOINT, NOT_TWGTM])


def test_the_pack_declares_combos_in_the_form_the_host_checks(server, info):
    """nodes/host.py asks the running host whether it checks "COMBO" values itself: 0.33.0 does (and a list
    type would reject every prompt there), 0.3.64 does not (only a list-typed combo is checked there)."""
    checks_combo = profile_of(server.host).checks_combo_values
    combos = [(node["name"], name, typ, opts["options"]) for node in info.values() if node["name"].startswith("TWGTM")
              for cat in ("required", "optional") for name, (typ, opts) in node["input"].get(cat, {}).items()
              if "options" in opts]
    assert len(combos) == 9
    for node, name, typ, options in combos:
        assert typ == ("COMBO" if checks_combo else options), (node, name, typ)


def test_the_stubs_describe_the_nodes_like_the_real_server(server, info):
    """tests/comfy_stubs.py, with its profile of this host, gives the same /object_info as the real server: every
    field of our nodes, and the outputs of the core nodes the workflows use (CI's fast tests rely on it)."""
    host = profile_of(server.host)
    with comfy_stubs.load_pack(server.base, name="twgtm_live_probe", host=host) as pack:
        stub_info = json.loads(json.dumps(comfy_stubs.object_info(pack)))  # tuples -> lists, as the server sends
    assert set(stub_info) == {k for k in info if k.startswith("TWGTM")}
    for name, node in stub_info.items():
        assert node == info[name], name
    for name, node in comfy_stubs.core_object_info(host).items():
        assert (node["output"], node["output_node"]) == (info[name]["output"], info[name]["output_node"]), name


@pytest.mark.parametrize("name", NAMES)
def test_workflows_validate_against_the_real_node_definitions(name, info):
    files = {p.name for p in INPUTS.glob("*.png")}
    assert comfy_stubs.validate_ui_workflow(load(name), info, files) == []
    assert comfy_stubs.validate_api_prompt(load(f"{name}_api"), info, files) == []


@pytest.mark.parametrize("name,expected_sizes", [
    ("twgtm_try_on", {"8": (216, 288)}),
    ("twgtm_try_off", {"7": (48, 64), "9": (48, 64)}),
    ("twgtm_round_trip", {"5": (48, 64), "11": (216, 288)}),
])
def test_api_workflow_runs_to_completion(server, name, expected_sizes):
    from PIL import Image

    entry = server.run(load(f"{name}_api"))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:3000]
    files = saved_files(server, entry)
    assert set(files) == set(expected_sizes)
    for node_id, size in expected_sizes.items():
        (path,) = files[node_id]
        with Image.open(path) as im:
            assert im.size == size  # (W, H): try-on keeps the person's size, try-off gives the model canvas


def test_the_model_is_loaded_once_and_reused(server):
    server.run(load("twgtm_try_on_api"))
    server.run(load("twgtm_try_off_api"))
    log = server.log.read_text()
    loads = [ln for ln in log.splitlines() if f"TWGTM: loading {EXAMPLE_CHECKPOINT}" in ln]
    assert len(loads) == 1
    assert "should be kept in float32" not in log  # diffusers' false cast warning (twgtm.components.move)


def test_an_image_wired_into_a_mask_input_is_rejected(server):
    prompt = copy.deepcopy(load("twgtm_try_on_api"))
    prompt["6"]["inputs"]["mask"] = ["2", 0]  # the person LoadImage's IMAGE
    status, resp = server.submit(prompt)
    assert status == 400
    errors = resp["node_errors"]["6"]["errors"]
    assert any(e["type"] == "return_type_mismatch" and "mask" in e["details"] for e in errors)


def test_a_missing_model_file_names_the_folder(server):
    prompt = copy.deepcopy(load("twgtm_try_on_api"))
    prompt["1"]["inputs"]["twgtm_file"] = "absent.safetensors"
    status, resp = server.submit(prompt)
    assert status == 400
    details = " ".join(e["details"] for e in resp["node_errors"]["1"]["errors"])
    assert "absent.safetensors" in details and str(server.base / "models" / "twgtm") in details


def test_a_checkpoint_that_is_not_twgtm_fails_with_a_clear_error(server):
    prompt = copy.deepcopy(load("twgtm_try_on_api"))
    prompt["1"]["inputs"]["twgtm_file"] = NOT_TWGTM
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "error"
    (err,) = [d for kind, d in entry["status"]["messages"] if kind == "execution_error"]
    assert err["node_type"] == "TWGTMModelLoader"
    assert "is not a TWGTM checkpoint" in err["exception_message"]
    assert "Stable Diffusion checkpoint" in err["exception_message"]


def test_interrupt_stops_the_sampler_and_the_model_stays_usable(server):
    prompt = copy.deepcopy(load("twgtm_try_on_api"))
    prompt["7"]["inputs"].update(steps=500, seed=5)  # long enough to be interrupted mid-loop
    status, resp = server.submit(prompt)
    assert status == 200
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until the prompt runs, then give the sampler time to start
        _, queue = server.get("/queue")
        if queue["queue_running"]:
            break
        time.sleep(0.2)
    time.sleep(2.0)
    _http("POST", server.url + "/interrupt", {})
    entry = server.wait(resp["prompt_id"], timeout=120)
    kinds = {kind: d for kind, d in entry["status"]["messages"]}
    assert "execution_interrupted" in kinds and kinds["execution_interrupted"]["node_type"] == "TWGTMSampler"
    again = server.run(load("twgtm_try_on_api"))
    assert again["status"]["status_str"] == "success"


def _log_since(server: Server, offset: int) -> list[str]:
    return server.log.read_text()[offset:].splitlines()


def _unload_all_models(server: Server) -> None:
    """POST /free {"unload_models": true}: the prompt worker unloads every model when it next wakes up
    (at once, when idle); ComfyUI's output cache (the loaded TWGTM_MODEL) is kept."""
    assert _http("POST", server.url + "/free", {"unload_models": True})[0] == 200
    time.sleep(2.0)


def test_each_node_loads_only_the_components_it_needs(server):
    """One ModelPatcher per component, loaded by load_models_gpu only when a node needs it: ComfyUI logs
    "Requested to load <holder class>" for each. Garment Mask: the reference encoder alone. Sampler: the
    reference encoder, then the UNet and the VAE."""
    mask_only = {k: v for k, v in copy.deepcopy(load("twgtm_try_off_api")).items() if k in ("1", "2", "3")}
    mask_only["3"]["inputs"]["threshold"] = 0.37  # not a cached output
    mask_only["8"] = {"class_type": "MaskToImage", "inputs": {"mask": ["3", 0]}}
    mask_only["9"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    requested = lambda lines: [ln.split("Requested to load ")[1].strip() for ln in lines  # noqa: E731
                               if "Requested to load " in ln]

    _unload_all_models(server)
    offset = len(server.log.read_text())
    assert server.run(mask_only)["status"]["status_str"] == "success"
    assert requested(_log_since(server, offset)) == ["TWGTMReferenceEncoder"]

    _unload_all_models(server)
    offset = len(server.log.read_text())
    prompt = copy.deepcopy(load("twgtm_try_on_api"))
    prompt["7"]["inputs"].update(steps=2, seed=123)  # a new sampler run; the loader's output is reused
    assert server.run(prompt)["status"]["status_str"] == "success"
    lines = _log_since(server, offset)
    loaded = requested(lines)  # load_models_gpu loads the models of one call in no fixed order
    assert loaded[0] == "TWGTMReferenceEncoder" and sorted(loaded[1:]) == ["TWGTMUNet", "TWGTMVAE"], loaded
    assert not [ln for ln in lines if "TWGTM: loading" in ln]  # ComfyUI's output cache kept the model


PARTIAL_LOAD_PROBE = """
import importlib, importlib.util, json, os, sys
pack_root = sys.argv[1]
sys.argv = ["main.py", "--cpu"]
sys.path.insert(0, os.getcwd())  # the ComfyUI checkout
import comfy.options
comfy.options.enable_args_parsing()
import torch
import comfy.model_patcher

spec = importlib.util.spec_from_file_location("twgtm_partial_probe", os.path.join(pack_root, "__init__.py"),
                                              submodule_search_locations=[pack_root])
pack = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = pack
spec.loader.exec_module(pack)
loader = importlib.import_module(spec.name + ".nodes.loader")
TWGTMConfig = importlib.import_module(spec.name + ".twgtm.config").TWGTMConfig
TWGTMComponents = importlib.import_module(spec.name + ".twgtm.components").TWGTMComponents
META, CPU = torch.device("meta"), torch.device("cpu")
cfg = TWGTMConfig.tiny()


def build():
    torch.manual_seed(0)
    return TWGTMComponents.build(cfg, random_prompts=True).eval()


def forward(name, net):
    dev = net.device  # where the pipeline puts a component's inputs
    with torch.no_grad():
        if name == "reference_encoder":
            return net.garment_mask_logits(torch.zeros(1, 3, cfg.height, cfg.width, device=dev),
                                           torch.zeros(1, dtype=torch.long, device=dev))
        if name == "vae":
            return net.encode(torch.zeros(1, 3, cfg.height, cfg.width, device=dev))
        h, w = cfg.latent_size
        ctx = torch.zeros(1, 1 + cfg.qformer.num_queries, cfg.cross_attention_dim, device=dev)
        return net(torch.zeros(1, 9, h, 2 * w, device=dev), 10, encoder_hidden_states=ctx)


def devices(module):
    tensors = [t for _, t in module.named_parameters()] + [t for _, t in module.named_buffers()]
    return {"moved": sum(t.device == META for t in tensors), "left": sum(t.device == CPU for t in tensors)}


out = {}
for budget in ("half", "roomy"):
    for name, net in build().modules().items():
        holder = loader.HOLDERS[name](net)
        patcher = comfy.model_patcher.ModelPatcher(holder, load_device=META, offload_device=CPU)
        memory = patcher.model_size() // 2 if budget == "half" else patcher.model_size() * 10
        patcher.load(META, lowvram_model_memory=memory, full_load=False)  # a partial (lowvram) load
        r = dict(devices(holder), model_lowvram=holder.model_lowvram)
        try:
            forward(name, net)
            r["forward"] = "ok"
        except Exception as e:
            r["forward"] = f"{type(e).__name__}: {e}"
        patcher.load(META, full_load=True)  # what force_full_load=True asks for
        r["full_load"] = devices(holder)
        out[f"{budget}/{name}"] = r
try:
    bare = build().unet
    comfy.model_patcher.ModelPatcher(bare, load_device=CPU, offload_device=CPU).load(CPU, full_load=True)
    out["bare_unet"] = "ok"
except Exception as e:
    out["bare_unet"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""


def test_a_partial_comfyui_load_leaves_plain_modules_behind(host):
    """Why nodes/memory.py loads with force_full_load=True: with the real ``ModelPatcher.load`` a partial
    (lowvram) load of a TWGTM component moves only the modules that fit (the meta device plays the GPU) and
    leaves the rest of these plain torch modules on the offload device, while ComfyUI records the model as
    completely loaded (``model_lowvram`` False); the component then fails on a device mismatch. Parameters of
    non-leaf modules (the reference encoder's Swin and CLIP) stay behind even when everything would fit.
    A full load moves everything. And a component needs its holder: ModelPatcher sets ``device`` on it."""
    proc = subprocess.run([host.python, "-c", PARTIAL_LOAD_PROBE,
                           str(comfy_stubs.PACK_ROOT)], cwd=host.comfyui_dir, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    print(json.dumps(out, indent=1))  # the counts, for the record (pytest -s)
    for name in ("unet", "vae", "reference_encoder"):
        r = out[f"half/{name}"]
        assert r["moved"] > 0 and r["left"] > 0, (name, r)  # split between the two devices
        assert r["model_lowvram"] is False, (name, r)      # and ComfyUI believes it is loaded completely
        assert r["forward"].startswith("RuntimeError") and "device" in r["forward"], (name, r)
        assert r["full_load"]["left"] == 0, (name, r)
    roomy = out["roomy/reference_encoder"]
    assert roomy["left"] > 0 and roomy["forward"].startswith("RuntimeError"), roomy
    assert out["bare_unet"].startswith("AttributeError") and "device" in out["bare_unet"], out["bare_unet"]


# ----------------------------------------------------------------------------- validation before the run
def _bad_prompts() -> dict[str, dict]:
    """Try-on prompts with one mistake each (they must all be refused by POST /prompt)."""
    cases = {}
    for node_id, name, value in [("6", "category", "shirt"), ("7", "scheduler", "karras"), ("1", "dtype", "int8"),
                                 ("1", "twgtm_file", "absent.safetensors"),
                                 ("1", "base_model", "sd15_inpainting.safetensors"),
                                 ("1", "vae", "vae-ft-mse.safetensors"), ("1", "clip_vision", "clip_l.safetensors")]:
        prompt = copy.deepcopy(load("twgtm_try_on_api"))
        prompt[node_id]["inputs"][name] = value
        cases[f"{name}={value}"] = prompt
    for source in ("string", "image"):
        prompt = copy.deepcopy(load("twgtm_try_on_api"))
        if source == "string":
            prompt["9"] = {"class_type": "PrimitiveString", "inputs": {"value": "hello"}}
            prompt["6"]["inputs"]["mask"] = ["9", 0]
        else:
            prompt["6"]["inputs"]["mask"] = ["2", 0]
        cases[f"mask<-{source}"] = prompt
    return cases


def _summary(node_errors: dict) -> dict:
    return {nid: [(e["type"], e["extra_info"].get("input_name"), e["details"]) for e in
                  (v["errors"] if isinstance(v, dict) else v)] for nid, v in node_errors.items()}


@pytest.mark.parametrize("node_id,name,value", [("6", "category", "shirt"), ("7", "scheduler", "karras"),
                                                ("1", "dtype", "int8")])
def test_a_combo_value_outside_its_list_is_refused_once_under_its_input(server, node_id, name, value):
    """On every host: 0.33.0 checks the pack's "COMBO" inputs itself, 0.3.64 the list-typed ones it gets there."""
    status, resp = server.submit(_bad_prompts()[f"{name}={value}"])
    assert status == 400, resp
    assert set(resp["node_errors"]) == {node_id}
    (error,) = resp["node_errors"][node_id]["errors"]
    assert error["type"] == "value_not_in_list" and error["extra_info"]["input_name"] == name
    assert repr(value) in error["details"]


@pytest.mark.parametrize("name,value", [("twgtm_file", "absent.safetensors"),
                                        ("base_model", "sd15_inpainting.safetensors"),
                                        ("vae", "vae-ft-mse.safetensors"), ("clip_vision", "clip_l.safetensors")])
def test_a_missing_model_file_is_reported_once_under_its_input(server, name, value):
    status, resp = server.submit(_bad_prompts()[f"{name}={value}"])
    assert status == 400, resp
    assert set(resp["node_errors"]) == {"1"}
    (error,) = resp["node_errors"]["1"]["errors"]
    assert error["extra_info"]["input_name"] == name and value in error["details"]


def test_a_string_wired_into_a_mask_input_is_refused(server):
    """The hosts check the link types of V3 inputs themselves (return_type_mismatch), so the pack need not."""
    status, resp = server.submit(_bad_prompts()["mask<-string"])
    assert status == 400, resp
    (error,) = resp["node_errors"]["6"]["errors"]
    assert error["type"] == "return_type_mismatch" and error["extra_info"]["input_name"] == "mask"
    assert "received_type(STRING)" in error["details"]


def test_the_stubs_report_the_errors_of_the_real_server(server):
    """tests/comfy_stubs.comfy_node_errors (used by test_nodes.py), with its profile of this host, gives exactly
    the real node_errors."""
    host = profile_of(server.host)
    with comfy_stubs.load_pack(server.base, name="twgtm_live_validation_probe", host=host) as pack:
        for case, prompt in _bad_prompts().items():
            status, resp = server.submit(prompt)
            expected = comfy_stubs.comfy_node_errors(prompt, pack.registered.classes, host=host)
            assert _summary(resp["node_errors"]) == _summary(expected), case
            assert status == 400, case


# ----------------------------------------------------------------------------- transparent garments
def test_a_transparent_garment_is_put_on_white(server):
    """A garment PNG with alpha: LoadImage gives black where transparent. With its MASK wired into
    garment_transparency (the shipped workflow), or joined back into a 4-channel IMAGE, the result equals
    the run with the same garment drawn on white; unwired it differs."""
    import numpy as np
    from PIL import Image

    rgba = np.zeros((256, 192, 4), np.uint8)
    rgba[40:220, 30:162] = (26, 51, 230, 255)  # a blue top, opaque; transparent (and black) around it
    Image.fromarray(rgba, "RGBA").save(server.base / "input" / "garment_rgba.png")
    on_white = np.full((256, 192, 3), 255, np.uint8)
    on_white[40:220, 30:162] = (26, 51, 230)
    Image.fromarray(on_white, "RGB").save(server.base / "input" / "garment_on_white.png")

    def result(garment: str, how: str) -> np.ndarray:
        prompt = copy.deepcopy(load("twgtm_try_on_api"))
        prompt["7"]["inputs"]["steps"] = 2
        prompt["3"]["inputs"]["image"] = garment
        assert prompt["6"]["inputs"]["garment_transparency"] == ["3", 1]  # as shipped
        if how != "wired":
            del prompt["6"]["inputs"]["garment_transparency"]
        if how == "joined":
            prompt["10"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["3", 0], "alpha": ["3", 1]}}
            prompt["6"]["inputs"]["garment"] = ["10", 0]
        entry = server.run(prompt)
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:3000]
        (path,) = saved_files(server, entry)["8"]
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))

    reference = result("garment_on_white.png", "unwired")
    assert np.array_equal(result("garment_rgba.png", "wired"), reference)
    assert np.array_equal(result("garment_rgba.png", "joined"), reference)
    assert not np.array_equal(result("garment_rgba.png", "unwired"), reference)


# ----------------------------------------------------------------------------- missing requirements
HIDE_REQUIREMENTS = """
import runpy, sys
class Hide:  # diffusers and timm are not installed (ComfyUI itself needs transformers)
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("diffusers", "timm"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Hide())
sys.argv = ["main.py"] + sys.argv[1:]
runpy.run_path("main.py", run_name="__main__")
"""


@pytest.fixture(scope="module")
def server_without_requirements(host, tmp_path_factory):
    """A second server whose Python lacks diffusers and timm (hidden by an import hook)."""
    base = _base_dir(tmp_path_factory, f"comfyui_base_noreq_{host.version}")
    with _running_server(host, base, ["-c", HIDE_REQUIREMENTS]) as srv:
        yield srv, host.python


def test_missing_requirements_are_named_once_with_the_install_command(server_without_requirements):
    srv, python = server_without_requirements
    command = f"{python} -m pip install -r {srv.base / 'custom_nodes' / PACK_LINK / 'requirements.txt'}"
    lines = [ln for ln in srv.log.read_text().splitlines() if command in ln]
    assert len(lines) == 1 and "diffusers, timm" in lines[0], srv.log.read_text()[-4000:]
    status, info = srv.get("/object_info")
    assert status == 200 and {k for k in info if k.startswith("TWGTM")} == {
        "TWGTMModelLoader", "TWGTMTryOnConditioning", "TWGTMTryOffConditioning", "TWGTMGarmentMask",
        "TWGTMSampler", "TWGTMMaskToBox"}  # still listed
    status, resp = srv.submit(load("twgtm_try_on_api"))  # refused before anything runs
    assert status == 400, resp
    for node_id in ("1", "7"):  # the loader and the sampler need the requirements
        (error,) = resp["node_errors"][node_id]["errors"]
        assert command in error["details"] and "diffusers" in error["details"], error
