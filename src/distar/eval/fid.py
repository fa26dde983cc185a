"""Fréchet Inception Distance on torchmetrics, with an injectable feature extractor (metrics.md §6).

FID = ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^½) over feature vectors of reference (r) and
generated (g) images; the sums behind μ and Σ are torchmetrics' ``FrechetInceptionDistance`` states.

Default protocol (GigaGAN/DMD2 zero-shot COCO): both image sets are centre-cropped to a square and
resized with PIL LANCZOS to ``resolution`` (512 by default; 256 is the other published choice), then
fed as uint8 to the extractor. The default extractor is Inception-v3 pool3 (2048-d) from the
TF-ported torchscript ``inception-2015-12-05.pt`` with clean-fid's "clean" resize to 299 (PIL
bicubic on float32 channels). Numbers are comparable only within one protocol (extractor, resizes,
reference set, sample count).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from tqdm.auto import tqdm

from distar.config import ConfigError
from distar.eval.benchmarks import fetch
from distar.io import cache_dir, to_uint8
from distar.runstate import save_safetensors

INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def clean_resize(images: Tensor, size: int) -> Tensor:
    """uint8 (B, 3, H, W) → float32 (B, 3, size, size) in [0, 255]: PIL bicubic per float32 channel
    (clean-fid's "clean" mode; no re-quantisation)."""
    if images.shape[-2:] == (size, size):
        return images.float()
    out = np.empty((images.shape[0], 3, size, size), dtype=np.float32)
    for b, image in enumerate(images.cpu().numpy()):
        for c in range(3):
            channel = Image.fromarray(image[c].astype(np.float32))
            out[b, c] = np.asarray(channel.resize((size, size), Image.Resampling.BICUBIC)).clip(0, 255)
    return torch.from_numpy(out).to(images.device)


class InceptionV3Features(nn.Module):
    """Inception-v3 pool3 features of uint8 images (B, 3, H, W) → (B, num_features), as clean-fid.

    ``path``: the torchscript file (called as ``model(x, return_features=True)`` on float images in
    [0, 255] at 299²); downloaded once from :data:`INCEPTION_URL` when None.
    """

    def __init__(self, path: str | Path | None = None, input_size: int = 299) -> None:
        super().__init__()
        path = Path(path) if path else fetch(INCEPTION_URL, "inception-2015-12-05.pt")
        if not path.is_file():
            raise FileNotFoundError(f"FID feature extractor not found: {path}")
        self.model = torch.jit.load(str(path), map_location="cpu").eval()
        self.input_size = input_size
        #: Identifies the extractor in reference-statistics cache keys.
        self.cache_key = f"{path.stem}-{_file_digest(path)}"
        with torch.no_grad():
            self.num_features = int(self(torch.zeros(1, 3, input_size, input_size, dtype=torch.uint8)).shape[-1])

    def forward(self, images: Tensor) -> Tensor:
        x = clean_resize(images, self.input_size)
        return self.model(x, return_features=True).reshape(x.shape[0], -1)


def prepare_uint8(images: Tensor, resolution: int | None) -> Tensor:
    """Images in [0, 1] (B, 3, H, W) → uint8, centre-cropped to a square and PIL-LANCZOS-resized to
    ``resolution`` (unchanged size when None)."""
    pixels = to_uint8(images)
    out = [_crop_resize(Image.fromarray(p), resolution) for p in pixels]
    return torch.from_numpy(np.stack([np.asarray(o) for o in out])).permute(0, 3, 1, 2)


def _crop_resize(image: Image.Image, resolution: int | None) -> Image.Image:
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if resolution is not None and image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return image


def _extractor_key(extractor: nn.Module) -> str:
    key = getattr(extractor, "cache_key", None)
    if key:
        return str(key)
    digest = hashlib.sha256(type(extractor).__qualname__.encode())
    for name, tensor in sorted(extractor.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return f"{type(extractor).__name__}-{digest.hexdigest()[:16]}"


def reference_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), in sorted order."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class FID:
    """FID of each model's images against one reference set, as a set metric named ``"fid"``.

    ``reference``: a folder of reference images (e.g. COCO-2014 ``val2014``), whose statistics are
    computed once and cached under ``cache`` keyed by extractor, resolution and the folder's file
    list; or a statistics ``.safetensors`` file written by that cache.
    """

    name = "fid"

    def __init__(
        self,
        extractor: nn.Module,
        reference: str | Path,
        resolution: int | None = 512,
        device: torch.device | str = "cpu",
        batch_size: int = 50,
        cache: str | Path | None = None,
    ) -> None:
        self.extractor_key = _extractor_key(extractor)
        self.metric = FrechetInceptionDistance(feature=extractor, reset_real_features=False).to(device)
        self.reference = Path(reference)
        self.resolution = resolution
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.cache = Path(cache) if cache else cache_dir() / "fid"
        self._reference_loaded = False

    def _update(self, images_uint8: Tensor, real: bool) -> None:
        self.metric.update(images_uint8.to(self.device), real=real)

    def reference_stats_path(self) -> Path:
        """Where this reference's statistics are (or will be) cached."""
        if self.reference.suffix == ".safetensors":
            return self.reference
        files = reference_images(self.reference)
        if not files:
            raise ConfigError(f"FID reference folder has no images: {self.reference}")
        digest = hashlib.sha256(f"{self.extractor_key}|{self.resolution}|{self.reference.resolve()}".encode())
        for f in files:
            digest.update(f"{f.relative_to(self.reference)}:{f.stat().st_size}\n".encode())
        return self.cache / f"ref-{self.extractor_key}-r{self.resolution}-{digest.hexdigest()[:16]}.safetensors"

    def load_reference(self) -> int:
        """Fill the reference states (from cache, else from the images; then cached); the count."""
        if not self.reference.exists():
            raise FileNotFoundError(f"FID reference not found: {self.reference}")
        path = self.reference_stats_path()
        if path.is_file():
            stats = load_file(str(path))
            for key in _STATES:
                setattr(self.metric, key, stats[key].to(self.device))
        else:
            self._compute_reference(reference_images(self.reference))
            path.parent.mkdir(parents=True, exist_ok=True)
            save_safetensors(path, {k: getattr(self.metric, k) for k in _STATES})
        self._reference_loaded = True
        return int(self.metric.real_features_num_samples)

    def _compute_reference(self, files: Sequence[Path]) -> None:
        bad: list[str] = []
        for start in tqdm(range(0, len(files), self.batch_size), desc="FID reference", unit="batch"):
            batch = []
            for f in files[start : start + self.batch_size]:
                try:
                    with Image.open(f) as image:
                        batch.append(np.asarray(_crop_resize(image.convert("RGB"), self.resolution)))
                except OSError as err:
                    bad.append(f"{f.name} ({err.__class__.__name__})")
            if batch:
                self._update(torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2), real=True)
        if bad:
            warnings.warn(f"FID reference: skipped {len(bad)} unreadable image(s): {', '.join(bad[:10])}", stacklevel=2)

    @torch.no_grad()
    def compute(self, batches: Iterable[tuple[Tensor, Sequence[dict]]]) -> dict[str, float]:
        """FID of the images in ``batches`` ((B, 3, H, W) in [0, 1], with their records)."""
        references = self.load_reference() if not self._reference_loaded else int(self.metric.real_features_num_samples)
        self.metric.reset()  # generated-image states only; the reference is kept
        count = 0
        for images, _ in batches:
            self._update(prepare_uint8(images, self.resolution), real=False)
            count += images.shape[0]
        if count < 2:
            raise ValueError("FID needs at least 2 generated images")
        return {"fid": float(self.metric.compute()), "fid_images": count, "fid_reference_images": references}

