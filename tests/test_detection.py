"""Detection models end to end (issue #27): Ultralytics YOLO (v8 and 11: detect, segment, pose) and
torchvision's detectors, called as their users call them, analyzed, sliced exactly, pruned to a
budget and exported. Slow (``make test-slow``); small inputs and the n-size models.

Ultralytics is AGPL-3.0: an optional extra (``pip install graphprune[detection]``) that these tests
use and graphprune never imports.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch

import graphprune
from graphprune.slimming.exactness import half_plan, randomize_small_tensors
from graphprune.tracing.flops import flop_counter
from helpers import EXACT, slim_error

os.environ.setdefault("YOLO_OFFLINE", "1")  # Ultralytics asks nothing of the network
ROOT = Path(__file__).resolve().parents[1]


def test_graphprune_never_imports_ultralytics():
    """AGPL-3.0: a test and benchmark dependency only."""
    sources = sorted((ROOT / "graphprune").rglob("*.py"))
    assert len(sources) > 70
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "ultralytics" for n in names), path


def check_counts(model: torch.nn.Module, gg: graphprune.GroupGraph, inputs: tuple) -> None:
    """The budget counts what the model computes: MACs as FlopCounterMode counts them, parameters."""
    with flop_counter() as counter, torch.no_grad():
        model(*inputs)
    assert gg.cost.macs() == counter.get_total_flops() // 2
    assert gg.cost.params() == sum(p.numel() for p in model.parameters())
    for g in gg.groups:
        assert g.prunable or g.reason


# ------------------------------------------------------------------------------------------ YOLO

YOLO = [
    ("yolov8n.yaml", "DetectionModel"), ("yolov8n-seg.yaml", "SegmentationModel"), ("yolov8n-pose.yaml", "PoseModel"),
    ("yolo11n.yaml", "DetectionModel"), ("yolo11n-seg.yaml", "SegmentationModel"), ("yolo11n-pose.yaml", "PoseModel"),
    ("yolov8s.yaml", "DetectionModel"), ("yolov8s-seg.yaml", "SegmentationModel"), ("yolov8s-pose.yaml", "PoseModel"),
    # 4 attention heads of 64 viewed as 256 channels: the tie only unequal probes find
    ("yolo11s.yaml", "DetectionModel"), ("yolo11s-seg.yaml", "SegmentationModel"), ("yolo11s-pose.yaml", "PoseModel"),
]
#: why YOLO's frozen groups are frozen: the image, what the model returns (raw head outputs, the
#: feature maps its loss reads), the decoding its eval mode adds (anchors, DFL, strides) and the
#: heads' reshapes of their outputs
YOLO_FROZEN = ("model input", "model output", "runs in eval mode only", "ultralytics/nn/modules/head.py")


def yolo(config: str, cls: str) -> torch.nn.Module:
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    torch.manual_seed(0)
    model = getattr(tasks, cls)(config, verbose=False).eval()
    randomize_small_tensors(model)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("config, cls", YOLO, ids=[c for c, _ in YOLO])
def test_yolo_prunes_exactly_to_budget_and_exports(config, cls, tmp_path):
    model, x = yolo(config, cls), torch.randn(1, 3, 320, 320)
    gg = graphprune.analyze(model, x)
    check_counts(model, gg, (x,))
    assert gg.fallbacks == [] and not any(s.guarded for s in gg.traced.specializations)  # one graph, every input
    assert gg.prunable_mac_share() >= 0.99
    frozen = {g.reason for g in gg.groups if not g.prunable}
    assert all(any(why in r for why in YOLO_FROZEN) for r in frozen), frozen
    for branch in ("cv2.0.", "cv3.2.") + (("cv4.1.",) if cls != "DetectionModel" else ()):
        head = f"model.{len(model.model) - 1}.{branch}"  # box, class, and mask or keypoint branches
        assert any(g.prunable for g in gg.groups if any(m.module.startswith(head) for m in g.members)), head
    assert slim_error(model, gg, half_plan(gg), (x,)) <= EXACT  # it zeroed half of every group: prune a new one
    # YOLO11's attention block sizes two groups with one attribute: output="module" keeps them whole
    result = graphprune.apply(yolo(config, cls), "l1", 0.5, x, **({"output": "module"} if config.startswith("yolo11") else {}))
    assert type(result.model).__name__ == cls
    assert abs(result.report.macs_after / result.report.macs_before - 0.5) <= 0.005
    report = graphprune.export_onnx(result.model, str(tmp_path / "pruned.onnx"), x)  # the raw head outputs among them
    assert report.relative_diff <= 1e-4 and report.dynamic_batch_checked


@pytest.mark.slow
def test_yolo_wrapper_predicts_with_the_pruned_model(tmp_path, monkeypatch):
    """Ultralytics' YOLO wrapper holds the pruned DetectionModel (docs/yolo.md trains and exports it)."""
    ultralytics = pytest.importorskip("ultralytics")
    import numpy as np

    monkeypatch.chdir(tmp_path)  # whatever Ultralytics writes (runs/) lands here
    torch.manual_seed(0)
    wrapper = ultralytics.YOLO("yolov8n.yaml")
    pruned = graphprune.apply(wrapper.model.eval(), "l1", 0.5, torch.randn(1, 3, 320, 320)).model
    wrapper.model = pruned
    (found,) = wrapper.predict(np.zeros((320, 320, 3), np.uint8), imgsz=320, device="cpu", verbose=False)
    assert found.boxes.data.shape[1] == 6 and wrapper.model is pruned


# ---------------------------------------------------------------------------------- torchvision

def two_stage(name: str = "fasterrcnn_mobilenet_v3_large_320_fpn", **options) -> torch.nn.Module:
    """A Faster R-CNN (or Mask, Keypoint R-CNN: ``name``) whose counts no data decides: thresholds
    that keep every candidate and no box regression (boxes are the anchors, none degenerate), so a
    pruned model's boxes are as many as the original's (the slim pass checks every shape); its scores
    and labels still read every channel. ``options``: the builder's (image size, boxes per image)."""
    from torchvision.models import detection

    torch.manual_seed(0)
    model = getattr(detection, name)(weights=None, weights_backbone=None, rpn_nms_thresh=1.0, box_nms_thresh=1.0,
                                     box_score_thresh=-1.0, **options).eval()
    randomize_small_tensors(model)
    with torch.no_grad():
        for path, p in model.named_parameters():
            if "bbox_pred" in path:
                p.zero_()
    return model


def faster_rcnn() -> torch.nn.Module:
    return two_stage()


@pytest.mark.slow
def test_faster_rcnn_on_a_list_of_images_prunes_exactly_to_budget_and_exports(tmp_path):
    """Backbone, FPN, the RPN head and the box head prunable; the image-list transform a leaf (its
    images are the model's input); anchors, NMS and RoI pooling traced along the example's path,
    with guards (the graph runs that path; ONNX cannot check them: the export warns)."""
    model, images = faster_rcnn(), [torch.rand(3, 320, 320)]
    gg = graphprune.analyze(model, (images,), specialize_submodules=True)
    check_counts(model, gg, (images,))
    assert [f.module for f in gg.fallbacks] == ["transform"]
    assert gg.prunable_mac_share() == 1.0  # the stem's image channels and the outputs are all that is frozen
    for member in ("backbone.fpn.layer_blocks.0.0", "rpn.head.conv.0.0", "roi_heads.box_head.fc6", "roi_heads.box_head.fc7"):
        assert any(g.prunable for g in gg.groups if any(m.module == member for m in g.members)), member
    fc6 = next(g for g in gg.groups if any(m.module == "roi_heads.box_head.fc6" and m.dim == 1 for m in g.members))
    assert fc6.prunable and fc6.size == 256  # the FPN's channels, through RoI pooling and the flatten
    assert any(s.guarded and s.conversion == "mode" for s in gg.traced.specializations)  # losses in training mode
    assert slim_error(model, gg, half_plan(gg), (images,)) <= EXACT  # it zeroed half of every group: prune a new one
    result = graphprune.apply(faster_rcnn(), "l1", 0.5, (images,), specialize_submodules=True)
    assert abs(result.report.macs_after / result.report.macs_before - 0.5) <= 0.005
    with pytest.warns(UserWarning, match="follows the path the example inputs took"):
        report = graphprune.export_onnx(result.model, str(tmp_path / "pruned.onnx"), (images,))
    assert report.relative_diff <= 1e-4 and report.unchecked_guards


#: one-stage detectors, each with a member of its feature pyramid (SSDlite has none: its backbone's
#: extra blocks) and of both heads' towers that must be prunable
ONE_STAGE = {
    "retinanet_resnet50_fpn": ("backbone.fpn.layer_blocks.0.0", "head.classification_head.conv.0.0", "head.regression_head.conv.3.0"),
    "fcos_resnet50_fpn": ("backbone.fpn.layer_blocks.0.0", "head.classification_head.conv.0", "head.regression_head.conv.9"),
    "ssdlite320_mobilenet_v3_large": ("backbone.extra.0.1.0", "head.classification_head.module_list.0.0.0", "head.regression_head.module_list.5.0.0"),
}


def one_stage(name: str) -> torch.nn.Module:
    """A RetinaNet, FCOS or SSDlite whose counts no data decides: every candidate scored and none
    suppressed, so a pruned model returns as many boxes as the original; its box regression stays
    live (the boxes read those channels). The ResNet-50 ones resize images to 256 pixels (2 CPU cores).

    torchvision initializes an untrained SSDlite's convolutions with std 0.03, which shrinks its
    activations about a thousandfold per block: every location of its deep maps then scores alike
    to rounding, and which of the tied detections come first would be rounding's choice.
    Variance-preserving weights keep its top scores apart by 1e-5 and more. Its forward loops over
    the classes (one unrolled step each): Pascal VOC's 21 keep the graph small."""
    from torchvision.models import detection

    torch.manual_seed(0)
    kwargs = {"num_classes": 21} if name.startswith("ssdlite") else {"min_size": 256, "max_size": 256}
    model = getattr(detection, name)(weights=None, weights_backbone=None, score_thresh=-1.0, nms_thresh=1.0,
                                     topk_candidates=50, detections_per_img=50, **kwargs).eval()
    if name.startswith("ssdlite"):
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
    randomize_small_tensors(model)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ONE_STAGE))
def test_one_stage_detector_on_a_list_of_images_prunes_exactly_to_budget_and_exports(name, tmp_path):
    """RetinaNet, FCOS and SSDlite as the Faster R-CNN above: backbone, pyramid and both heads'
    towers prunable; the image-list transform a leaf; anchors, per-level top-k, NMS and SSD's loop
    over its classes (``range(1, num_classes)`` in its own forward) traced along the example's path."""
    model = one_stage(name)
    images = [torch.rand(3, 320, 320) if name.startswith("ssdlite") else torch.rand(3, 256, 256)]
    gg = graphprune.analyze(model, (images,), specialize_submodules=True)
    check_counts(model, gg, (images,))
    assert [f.module for f in gg.fallbacks] == ["transform"]
    assert gg.prunable_mac_share() == 1.0  # the stems' image channels and the outputs are all that is frozen
    for member in ONE_STAGE[name]:
        assert any(g.prunable for g in gg.groups if any(m.module == member for m in g.members)), member
    assert any(s.guarded and s.conversion == "mode" for s in gg.traced.specializations)  # losses in training mode
    assert slim_error(model, gg, half_plan(gg), (images,)) <= EXACT  # it zeroed half of every group: prune a new one
    result = graphprune.apply(one_stage(name), "l1", 0.5, (images,), specialize_submodules=True)
    assert abs(result.report.macs_after / result.report.macs_before - 0.5) <= 0.005
    with pytest.warns(UserWarning, match="follows the path the example inputs took"):
        report = graphprune.export_onnx(result.model, str(tmp_path / "pruned.onnx"), (images,))
    assert report.relative_diff <= 1e-4 and report.unchecked_guards


#: Faster R-CNN's family with a mask or keypoint head, a member of that head that must be prunable, and the
#: function each runs per detected box that turns its box's coordinates into Python numbers (kept as one call)
MASK_OR_KEYPOINTS = {
    "maskrcnn_resnet50_fpn": ("roi_heads.mask_head.1.0", "paste_mask_in_image"),
    "keypointrcnn_resnet50_fpn": ("roi_heads.keypoint_head.2", "heatmaps_to_keypoints"),
}


def mask_or_keypoints(name: str) -> torch.nn.Module:
    """A Mask or Keypoint R-CNN as :func:`two_stage`, images resized to 256 pixels (2 CPU cores)."""
    return two_stage(name, box_detections_per_img=20, min_size=256, max_size=256)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MASK_OR_KEYPOINTS))
def test_mask_and_keypoint_rcnn_keep_their_per_box_python_as_one_call(name, tmp_path):
    """Pasting a mask, or reading a keypoint heatmap, at each box's size in pixels (``int(box[2] - box[0])``)
    would hold the example's boxes under guards that any other image, and the pruned model's own example,
    fail: that function runs as one opaque call instead, for any boxes."""
    model, images = mask_or_keypoints(name), [torch.rand(3, 256, 256)]
    member, function = MASK_OR_KEYPOINTS[name]
    gg = graphprune.analyze(model, (images,), specialize_submodules=True)
    check_counts(model, gg, (images,))
    assert [f.module for f in gg.fallbacks] == ["transform", f"torchvision.models.detection.roi_heads.{function}"]
    assert "turns tensor values into Python numbers" in gg.fallbacks[1].error
    assert gg.prunable_mac_share() == 1.0
    assert any(g.prunable for g in gg.groups if any(m.module == member for m in g.members)), member
    assert slim_error(model, gg, half_plan(gg), (images,)) <= EXACT
    result = graphprune.apply(mask_or_keypoints(name), "l1", 0.5, (images,), specialize_submodules=True)
    assert abs(result.report.macs_after / result.report.macs_before - 0.5) <= 0.005
    (found,) = result.model([torch.rand(3, 256, 256)])  # another image: other boxes, other sizes in pixels
    assert len(found["boxes"]) == 20 and len(found["masks" if "mask" in name else "keypoints"]) == 20
    with pytest.warns(UserWarning, match="follows the path the example inputs took.*ONNX holds the example's numbers"):
        report = graphprune.export_onnx(result.model, str(tmp_path / "pruned.onnx"), (images,))
    assert report.relative_diff <= 1e-4 and f"{gg.fallbacks[1].location} (ONNX holds the example's numbers)" in report.unchecked_guards
