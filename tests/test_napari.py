"""The napari reader for patch stores: layer data always; napari layers and a headless viewer when the
`viewer` extra is installed (skipped with the reason otherwise)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from stainshift.napari import find_predictions, napari_get_reader, read_store, store_layers
from stainshift.slide_view import tile_size0
from stainshift.store import PatchStore
from test_slide_view import crop_store, fake_predictions, slide_store

NO_NAPARI = "napari is not installed (optional extra: pip install 'stainshift[viewer]')"
MANIFEST = Path(__file__).resolve().parents[1] / "src" / "stainshift" / "napari.yaml"


@pytest.fixture()
def results_tree(tmp_path: Path) -> Path:
    """{R}/tiles/s0.zarr + {R}/predictions/{method}/s0.csv for two methods (every source's rows)."""
    tiles = tmp_path / "results" / "tiles"
    tiles.mkdir(parents=True)
    store = slide_store(tmp_path)
    store.rename(tiles / "s0.zarr")
    preds = fake_predictions(tiles / "s0.zarr", seeds=(0,))
    for method in ("baseline", "simclr"):
        out = tmp_path / "results" / "predictions" / method / "s0.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        preds.assign(method=method).to_csv(out, index=False)
    (tmp_path / "results" / "predictions" / "baseline" / "other_store.csv").write_text("not this store's\n")
    return tiles / "s0.zarr"


def test_reader_hook_accepts_stores_only(tmp_path: Path, results_tree: Path) -> None:
    assert napari_get_reader(str(results_tree)) is read_store
    assert napari_get_reader([str(results_tree)]) is read_store
    assert napari_get_reader([str(results_tree)] * 2) is None
    assert napari_get_reader(str(tmp_path)) is None and napari_get_reader(str(tmp_path / "x.zarr")) is None
    assert len(find_predictions(results_tree)) == 2 and find_predictions(tmp_path / "slide.png") == []


def test_layer_data_slide_store(results_tree: Path) -> None:
    store = PatchStore.open(results_tree)
    layers = read_store(str(results_tree))
    assert [kind for _, _, kind in layers] == ["image", "points", "image", "points"]
    (stack, stack_meta, _), (info, info_meta, _), (mosaic, mosaic_meta, _), (grid, grid_meta, _) = layers
    assert stack.shape == (36, 16, 16, 3) and np.array_equal(np.asarray(stack[5]), store.read(5)[0])
    features = info_meta["features"]
    assert {"index", "label", "label_name", "score_baseline", "score_simclr"} <= set(features.columns)
    assert features["label"].tolist() == store.label.tolist() and info.shape == (36, 3)
    assert grid_meta["features"] is features and grid_meta["face_color"] == "score_baseline"
    assert stack_meta["metadata"]["stainshift"]["methods"] == ["baseline", "simclr"]
    # the mosaic puts tile pixels back at their level-0 positions: tile i at coords / scale
    scale = mosaic_meta["scale"][0]
    assert scale == tile_size0(store) / 16 and mosaic.shape == (96, 96, 3)
    assert mosaic_meta["translate"] == (scale / 2, scale / 2)  # pixel (0, 0) covers level-0 [0, scale)
    x, y = (store.coords[7] // scale).astype(int)
    assert np.array_equal(mosaic[y:y + 16, x:x + 16], store.read(7)[0])
    assert np.allclose(grid, store.coords[:, ::-1] + tile_size0(store) / 2)
    # a pixel budget reduces the mosaic by an integer factor
    small = store_layers(results_tree, max_mosaic_px=48 * 48)[2]
    assert small[0].shape == (48, 48, 3) and small[1]["scale"][0] == 2 * scale


def test_layer_data_crop_store(tmp_path: Path) -> None:
    layers = store_layers(crop_store(tmp_path))
    assert [kind for _, _, kind in layers] == ["image", "points"]
    assert layers[1][1]["features"]["label_name"].tolist()[:2] == ["normal", "atypical"]


@pytest.mark.skipif(importlib.util.find_spec("napari") is None, reason=NO_NAPARI)
def test_napari_opens_store_headless(results_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """napari's layers from the reader's data, and napari's own open() through the plugin manifest on
    a headless ViewerModel (the viewer without Qt or OpenGL)."""
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    import npe2
    from napari.components import ViewerModel
    from napari.layers import Layer

    layers = [Layer.create(*ld) for ld in read_store(str(results_tree))]
    grid = layers[3]
    assert grid.features["score_simclr"].notna().all() and len(grid.data) == 36
    assert len(np.unique(grid.face_color.round(3), axis=0)) > 5  # filled by score through the colormap
    pm = npe2.PluginManager.instance()
    try:
        pm.get_manifest("stainshift")
    except KeyError:  # installed without the napari.manifest entry point (an older editable install)
        pm.register(npe2.PluginManifest.from_file(MANIFEST))
    viewer = ViewerModel()
    opened = viewer.open(str(results_tree), plugin="stainshift")
    assert [layer.name for layer in opened] == ["s0 tiles", "s0 tile info", "s0 on slide", "s0 tile grid"]
    assert viewer.layers["s0 tile info"].features["score_baseline"].between(0, 1).all()
    assert viewer.dims.nsteps[0] == 36  # one slice per tile
    assert viewer.layers["s0 tile grid"].extent.world[1].tolist() == pytest.approx([192, 192], abs=16)
