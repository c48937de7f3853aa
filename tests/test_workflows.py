"""The example workflows (workflows/*.json) against the node schemas, without ComfyUI.

Every UI-format workflow must load with no missing node and valid widget values and links; every API
twin must pass the checks of ComfyUI's POST /prompt and equal what the frontend exports from the UI file.
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_stubs  # noqa: E402

WORKFLOWS = comfy_stubs.PACK_ROOT / "workflows"
INPUTS = WORKFLOWS / "example_inputs"
NAMES = ["twgtm_try_on", "twgtm_try_off", "twgtm_round_trip"]
EXAMPLE_FILES = {p.name for p in INPUTS.glob("*.png")}


@pytest.fixture(scope="module", params=list(comfy_stubs.HOSTS.values()), ids=lambda h: f"comfyui-{h.version}")
def pack(tmp_path_factory, request):
    base = tmp_path_factory.mktemp("comfy_base")
    with comfy_stubs.load_pack(base, host=request.param) as module:
        # the example checkpoint must be listed for the loader's combo; its content is not read here
        (base / "models" / "twgtm" / module.nodes.loader.EXAMPLE_CHECKPOINT).write_bytes(b"")
        yield module


@pytest.fixture(scope="module")
def info(pack) -> dict:
    return comfy_stubs.full_object_info(pack)


def load(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def test_every_workflow_has_an_api_twin_and_nothing_else_ships():
    shipped = {p.name for p in WORKFLOWS.glob("*.json")}
    assert shipped == {f"{n}.json" for n in NAMES} | {f"{n}_api.json" for n in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_matches_the_node_schemas(name, info):
    wf = load(name)
    assert "nodes" in wf and "links" in wf  # UI (LiteGraph) format
    assert comfy_stubs.validate_ui_workflow(wf, info, EXAMPLE_FILES) == []


@pytest.mark.parametrize("name", NAMES)
def test_api_workflow_passes_prompt_validation(name, info):
    api = load(f"{name}_api")
    assert "nodes" not in api and all("class_type" in n for n in api.values())
    assert comfy_stubs.validate_api_prompt(api, info, EXAMPLE_FILES) == []


@pytest.mark.parametrize("name", NAMES)
def test_api_twin_is_the_export_of_the_ui_workflow(name, info):
    api = load(f"{name}_api")
    exported = comfy_stubs.ui_to_api(load(name), info)
    assert {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()} == exported


@pytest.mark.parametrize("name", NAMES)
def test_workflows_load_the_example_checkpoint_and_example_inputs(name, pack):
    api = load(f"{name}_api")
    loaders = [n for n in api.values() if n["class_type"] == "TWGTMModelLoader"]
    assert [n["inputs"]["twgtm_file"] for n in loaders] == [pack.nodes.loader.EXAMPLE_CHECKPOINT]
    used = {n["inputs"]["image"] for n in api.values() if n["class_type"] == "LoadImage"}
    assert used and used <= EXAMPLE_FILES


def test_workflows_cover_try_on_try_off_and_the_round_trip():
    kinds = {name: {n["class_type"] for n in load(f"{name}_api").values()} for name in NAMES}
    assert {"TWGTMTryOnConditioning", "TWGTMSampler"} <= kinds["twgtm_try_on"]
    assert {"TWGTMTryOffConditioning", "TWGTMGarmentMask", "TWGTMMaskToBox", "TWGTMSampler"} <= kinds["twgtm_try_off"]
    rt = load("twgtm_round_trip_api")
    on = next(n for n in rt.values() if n["class_type"] == "TWGTMTryOnConditioning")
    garment_src = rt[on["inputs"]["garment"][0]]
    assert garment_src["class_type"] == "TWGTMSampler"  # the try-on garment is the try-off result
    assert rt[garment_src["inputs"]["conditioning"][0]]["class_type"] == "TWGTMTryOffConditioning"
    person_on = rt[on["inputs"]["person"][0]]["inputs"]["image"]
    person_off = rt[rt[garment_src["inputs"]["conditioning"][0]]["inputs"]["person"][0]]["inputs"]["image"]
    assert person_on != person_off  # garment of A onto B


def test_try_on_takes_the_garment_transparency_from_its_loadimage():
    """A garment PNG with alpha: LoadImage's MASK (1 - alpha) goes to garment_transparency, so the
    transparent background becomes white instead of LoadImage's black."""
    api = load("twgtm_try_on_api")
    on = next(n for n in api.values() if n["class_type"] == "TWGTMTryOnConditioning")
    src, slot = on["inputs"]["garment_transparency"]
    assert [src, slot] == [on["inputs"]["garment"][0], 1] and api[src]["class_type"] == "LoadImage"
    wf = load("twgtm_try_on")
    node = next(n for n in wf["nodes"] if n["type"] == "TWGTMTryOnConditioning")
    (inp,) = [i for i in node["inputs"] if i["name"] == "garment_transparency"]
    link = next(ln for ln in wf["links"] if ln[0] == inp["link"])
    assert link[1] == int(src) and link[2] == 1 and link[5] == "MASK"


def test_example_inputs_are_small_generated_pngs():
    assert EXAMPLE_FILES == {"person_a.png", "person_a_mask.png", "person_b.png", "person_b_mask.png", "garment.png"}
    for name in EXAMPLE_FILES:
        path = INPUTS / name
        assert path.stat().st_size < 20_000
        with Image.open(path) as im:
            assert im.format == "PNG" and max(im.size) <= 512
            if name.endswith("_mask.png"):
                assert set(im.convert("L").getdata()) == {0, 255}
    for person in ("person_a", "person_b"):
        with Image.open(INPUTS / f"{person}.png") as a, Image.open(INPUTS / f"{person}_mask.png") as m:
            assert a.size == m.size


# ----------------------------------------------------------------------------- the checks can fail
def test_validator_rejects_a_mask_input_fed_an_image(info):
    """A MASK input linked to an IMAGE output is rejected, in both formats."""
    api = copy.deepcopy(load("twgtm_try_on_api"))
    cond = next(n for n in api.values() if n["class_type"] == "TWGTMTryOnConditioning")
    cond["inputs"]["mask"] = cond["inputs"]["person"]  # IMAGE into MASK
    errors = comfy_stubs.validate_api_prompt(api, info, EXAMPLE_FILES)
    assert any("received IMAGE but the input takes MASK" in e for e in errors)
    wf = copy.deepcopy(load("twgtm_try_on"))
    link = next(ln for ln in wf["links"] if ln[5] == "MASK")
    link[1], link[2], link[5] = 2, 0, "IMAGE"  # now starts at the person LoadImage's IMAGE output
    assert any("MASK" in e and "IMAGE" in e for e in comfy_stubs.validate_ui_workflow(wf, info, EXAMPLE_FILES))


def test_validator_rejects_missing_nodes_bad_widgets_and_ranges(info):
    wf = copy.deepcopy(load("twgtm_try_off"))
    sampler = next(n for n in wf["nodes"] if n["type"] == "TWGTMSampler")
    sampler["widgets_values"] = sampler["widgets_values"][:1] + sampler["widgets_values"][2:]  # control value lost
    assert any("widgets_values" in e for e in comfy_stubs.validate_ui_workflow(wf, info, EXAMPLE_FILES))
    wf = copy.deepcopy(load("twgtm_try_off"))
    wf["nodes"][0]["type"] = "TWGTMNoSuchNode"
    assert any("missing node" in e for e in comfy_stubs.validate_ui_workflow(wf, info, EXAMPLE_FILES))
    api = copy.deepcopy(load("twgtm_try_off_api"))
    sampler = next(n for n in api.values() if n["class_type"] == "TWGTMSampler")
    sampler["inputs"].update(steps=0, scheduler="lms")
    errors = comfy_stubs.validate_api_prompt(api, info, EXAMPLE_FILES)
    assert any("steps" in e and "min" in e for e in errors) and any("lms" in e for e in errors)
    api = copy.deepcopy(load("twgtm_try_off_api"))
    next(n for n in api.values() if n["class_type"] == "LoadImage")["inputs"]["image"] = "not_shipped.png"
    assert any("not_shipped.png" in e for e in comfy_stubs.validate_api_prompt(api, info, EXAMPLE_FILES))
