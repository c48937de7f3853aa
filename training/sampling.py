"""Model outputs for the trainer's sample grids, the report and ``evaluate``: try-on, try-off and the predicted
garment mask of a batch of items (:func:`run_model`), with dataset images mapped to [0, 1] (:func:`to_unit`);
the streaming loop of the report and ``evaluate`` (:func:`batches`: a DataLoader over one process's share of a
split, :func:`shard`; :func:`dist_info` / :func:`gather_to_rank0` for ``torch.distributed``)."""
from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from twgtm.components import TWGTMComponents
from twgtm.latents import mask_to_box
from twgtm.pipeline import TWGTMPipeline

__all__ = ["to_unit", "run_model", "item_seed_generators", "shard", "batches", "dist_info", "gather_to_rank0",
           "broadcast_from_rank0"]


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] dataset images -> [0, 1]."""
    return ((x.float() + 1.0) / 2.0).clamp(0, 1)


@torch.no_grad()
def run_model(model: TWGTMComponents, person: torch.Tensor, garment: torch.Tensor, mask: torch.Tensor,
              categories: list[str], *, steps: int, guidance_scale: float, seed: int, scheduler: str = "ddim",
              eta: Optional[float] = None, batch_size: int = 16, tryoff_region: str = "full",
              garment_mask: Optional[torch.Tensor] = None,
              tasks: Sequence[str] = ("tryon", "tryoff", "mask"),
              indices: Optional[Sequence[int]] = None) -> dict[str, torch.Tensor]:
    """Try-on, try-off and the predicted garment mask for all items (images in [0, 1], chunked).

    ``eta``: DDIM eta (None: the model config's). With try-off, the mask is the one try-off predicted
    (the same TFQ_0 as :meth:`TWGTMPipeline.predict_garment_mask`, computed once).

    Try-off uses the whole canvas (``tryoff_region="full"``), the box around ``garment_mask`` with a 5%
    margin (``"gt_box"``, Mask2BBox gt) or ``garment_mask`` itself (``"gt_mask"``), or the box around /
    the silhouette of the largest component of the model's own predicted mask (``"pred_box"``, Mask2BBox
    pred / ``"pred_mask"``). With a region the canvas stays white outside it (the pipeline's paste-back,
    as try-on pastes the person back outside its mask).

    A model without an SRM (ablation Variant 1) predicts no garment mask: the result then has no ``"mask"``.

    Item ``j`` of the split (``indices[k]``, default ``k``) is sampled with seed ``seed + j`` whatever the
    batching, so a split evaluated in batches, in shards over processes or resumed gives the same images.
    """
    pipe = TWGTMPipeline.from_components(model)
    out: dict[str, list[torch.Tensor]] = {t: [] for t in tasks}
    canvas = tuple(garment.shape[-2:])
    for i in range(0, len(person), batch_size):
        sl = slice(i, i + batch_size)
        cats = categories[sl]
        gen = item_seed_generators(seed, indices[sl] if indices is not None else range(i, i + len(cats)))
        if "tryon" in tasks:
            out["tryon"].append(pipe.try_on(person[sl], garment[sl], mask[sl], cats, num_inference_steps=steps,
                                            guidance_scale=guidance_scale, eta=eta, generator=gen,
                                            scheduler=scheduler).images)
        if "tryoff" in tasks:
            region = None
            if tryoff_region == "gt_box":
                region = mask_to_box(garment_mask[sl].float(), margin=0.05)
            elif tryoff_region == "gt_mask":
                region = (garment_mask[sl] > 0.5).float()
            # outside a region the canvas stays white (paste_back), as try-on pastes the person back
            off = pipe.try_off(person[sl], cats, region, predicted_box=tryoff_region == "pred_box",
                               predicted_mask=tryoff_region == "pred_mask", num_inference_steps=steps,
                               guidance_scale=guidance_scale, eta=eta, generator=gen, scheduler=scheduler,
                               output_size=canvas)
            out["tryoff"].append(off.images)
            if "mask" in tasks and off.garment_mask is not None:
                out["mask"].append(off.garment_mask)
        elif "mask" in tasks and _predicts_mask(model):
            out["mask"].append(pipe.predict_garment_mask(person[sl], cats, output_size=canvas))
    return {k: torch.cat(v) for k, v in out.items() if v}


def _predicts_mask(model: TWGTMComponents) -> bool:
    return model.reference_encoder is not None and model.reference_encoder.has_srm


def item_seed_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per item, seeded ``seed + index`` (as the pipeline's int seed ``s`` gives item ``i`` the
    seed ``s + i``)."""
    return [torch.Generator("cpu").manual_seed((seed + int(j)) % 2 ** 64 if seed >= 0 else seed + int(j))
            for j in indices]


def dist_info() -> tuple[int, int]:
    """(rank, world size) of an initialised ``torch.distributed`` group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(n: int, rank: int = 0, world: int = 1) -> list[int]:
    """The items of process ``rank`` out of ``world`` (accelerate's split): ``rank, rank + world, ...`` < n."""
    return list(range(rank, n, world))


class _Indexed(Dataset):
    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        return dict(self.base[index], index=index)


def batches(dataset: Dataset, indices: Sequence[int], batch_size: int, num_workers: int = 0) -> Iterator[dict]:
    """Collated batches of ``dataset[indices]`` in order, ``batch_size`` at a time (a DataLoader: only one batch is
    decoded and held at a time); each batch has ``index``, the items' positions in ``dataset``."""
    loader = DataLoader(Subset(_Indexed(dataset), list(indices)), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=default_collate)
    yield from loader


def gather_to_rank0(obj: Any) -> Optional[list]:
    """Every process's ``obj`` as a list on rank 0 (None on the others); ``[obj]`` without torch.distributed."""
    import torch.distributed as dist

    rank, world = dist_info()
    if world == 1:
        return [obj]
    out = [None] * world if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_rank0(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process (``obj`` itself without torch.distributed)."""
    import torch.distributed as dist

    if dist_info()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
