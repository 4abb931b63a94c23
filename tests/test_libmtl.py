"""The architectures LibMTL 1.1.5 also has, against LibMTL's own code: with the same weights loaded into both, the
forward outputs agree to 1e-6, on an MLP and a CNN backbone (DSelect-k once LibMTL's binary codes are put right).

LibMTL is installed without its dependencies (``make install``): its package ``__init__`` imports torchvision for
its ResNets, which this project does not need, so its architecture modules are loaded under a bare package. Its
MTAN needs its ResNet, whose module imports torchvision's download helper only to fetch pretrained weights: a
stand-in that refuses to download takes its place (no test asks for pretrained weights).
"""

import importlib
import importlib.util
import sys
import types
from contextlib import contextmanager
from functools import partial

import pytest
import torch
from torch import nn

from workbench.models import Backbone, conv_encoder, make_architecture, mlp_encoder
from workbench.tasks import classification_task, regression_task

TASKS = [regression_task("a"), regression_task("b"), classification_task("c", 3)]
BACKBONES = {
    "MLP": Backbone("MLP", partial(mlp_encoder, 5, (8, 6)), (6,), inputs=(5,)),
    "CNN": Backbone("CNN", partial(conv_encoder, 1, (4, 3)), (3, 4, 4), inputs=(1, 8, 8)),
}


@pytest.fixture(scope="module")
def libmtl():
    with libmtl_architectures() as package:
        yield package


@contextmanager
def libmtl_architectures():
    """LibMTL's ``architecture`` package, its package ``__init__`` (torchvision) left out (the benchmark uses it too)."""
    spec = importlib.util.find_spec("LibMTL")
    assert spec is not None, "LibMTL is not installed: make install puts in libmtl==1.1.5 without its dependencies"
    saved = {name: module for name, module in sys.modules.items() if name == "LibMTL" or name.startswith("LibMTL.")}
    package = types.ModuleType("LibMTL")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["LibMTL"] = package
    stand_in = _torchvision_stand_in() if importlib.util.find_spec("torchvision") is None else {}
    sys.modules.update(stand_in)
    try:
        yield importlib.import_module("LibMTL.architecture")
    finally:
        for name in [n for n in sys.modules if n == "LibMTL" or n.startswith("LibMTL.")] + list(stand_in):
            del sys.modules[name]
        sys.modules.update(saved)


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    """``torchvision.models.utils`` with the one name ``LibMTL.model.resnet`` imports, ``load_state_dict_from_url``, which refuses."""

    def load_state_dict_from_url(url, *args, **kwargs):
        raise RuntimeError(f"torchvision is not installed: no pretrained weights from {url}")

    modules = {name: types.ModuleType(name) for name in ("torchvision", "torchvision.models", "torchvision.models.utils")}
    modules["torchvision"].__path__, modules["torchvision.models"].__path__ = [], []
    modules["torchvision"].models, modules["torchvision.models"].utils = modules["torchvision.models"], modules["torchvision.models.utils"]
    modules["torchvision.models.utils"].load_state_dict_from_url = load_state_dict_from_url
    return modules


def _decoders(model) -> dict[str, nn.Module]:
    """LibMTL's decoders: each task's linear head of ``model`` on the flattened mixture."""
    return {t: nn.Sequential(nn.Flatten(), model.heads[t][1]) for t in model.task_names}


def _reference(libmtl, name: str, model, backbone: Backbone):
    """LibMTL's ``name`` with ``model``'s weights: its experts, gates and heads."""
    encoder = model.encoder
    common = dict(task_name=model.task_names, encoder_class=backbone.make, decoders=_decoders(model), rep_grad=False, multi_input=False,
                  device=torch.device("cpu"), img_size=list(backbone.inputs))
    n = len(encoder.experts)
    if name == "mmoe":
        reference = libmtl.MMoE(**common, num_experts=[n])
    elif name == "cgc":
        reference = libmtl.CGC(**common, num_experts=[n] + [len(encoder.own_experts[t]) for t in model.task_names])
        for task in model.task_names:
            for mine, theirs in zip(encoder.own_experts[task], reference.experts_specific[task]):
                theirs.load_state_dict(mine.state_dict())
    else:
        gate = encoder.gates[model.task_names[0]]
        reference = libmtl.DSelect_k(**common, num_experts=[n], num_nonzeros=gate.k, kgamma=gate.gamma)
        for task in model.task_names:
            reference._z_logits[task].load_state_dict(encoder.gates[task].selectors.state_dict())
            reference._w_logits[task].load_state_dict(encoder.gates[task].selector_weights.state_dict())
        # LibMTL 1.1.5 builds the experts' binary codes with astype(bool) on the strings "0" and "1", which are both
        # True: every code is all ones, so every expert gets the same weight and nothing is selected. Its codes are
        # put right here (most significant bit first, as its np.binary_repr means), and the rest is compared.
        assert reference._binary_codes.all()
        reference._binary_codes = gate.codes.unsqueeze(0)
    for mine, theirs in zip(encoder.experts, reference.experts_shared):
        theirs.load_state_dict(mine.state_dict())
    if reference.gate_specific is not None:
        for task in model.task_names:
            reference.gate_specific[task][0].load_state_dict(encoder.gates[task].state_dict())
    return reference


def assert_same_outputs(model, reference, x) -> None:
    """Every task's output of ``model`` and of LibMTL's ``reference`` on ``x`` agree to 1e-6."""
    with torch.no_grad():
        ours, expected = model(x), reference(x)
    for task in model.task_names:
        torch.testing.assert_close(ours[task], expected[task], rtol=0, atol=1e-6)


OPTIONS = {"mmoe": {"n_experts": 3}, "cgc": {"n_experts": 2, "own_experts": 2}, "dselect_k": {"n_experts": 3, "k": 2}}


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("name", OPTIONS)
def test_the_forward_outputs_equal_libmtl_s(libmtl, name, backbone):
    torch.manual_seed(0)
    model = make_architecture(name, TASKS, BACKBONES[backbone], experts="backbone", **OPTIONS[name]).eval()
    if name == "dselect_k":  # selectors far from their initial ±1/100, so that the smooth step's cubic and its flat parts both count
        for gate in model.encoder.gates.values():
            nn.init.normal_(gate.selectors.weight, std=2.0)
    reference = _reference(libmtl, name, model, BACKBONES[backbone]).eval()
    x = torch.randn(11, *BACKBONES[backbone].inputs, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(x), reference(x)
    assert list(theirs) == model.task_names
    for task in model.task_names:
        torch.testing.assert_close(ours[task], theirs[task], rtol=0, atol=1e-6)
    if name == "dselect_k":
        weights = model.encoder.mixtures(x)[1][0]
        assert ((weights > 0) & (weights < 1)).any() and (weights == 0).any(), "the smooth step was neither all flat nor all cubic"


class TinyResNet(nn.Module):
    """What LibMTL's Cross-stitch and PLE cut a ResNet by: a stem (conv1, bn1, relu, maxpool) and layer1 to layer4."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
        self.layer3 = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.layer4 = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.Tanh())

    def stem(self) -> nn.Module:
        return nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool)

    def forward(self, x):
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem()(x)))))


def _resnet(stages) -> Backbone:
    return Backbone("TinyResNet", TinyResNet, (6, 2, 2), inputs=(1, 8, 8), stages=stages)


CROSS_STITCH_STAGES = _resnet(lambda m: [nn.Sequential(*m.stem(), m.layer1), m.layer2, m.layer3, m.layer4])  # LibMTL stitches after layer1 to layer3
PLE_LEVELS = _resnet(lambda m: [m.stem(), m.layer1, m.layer2, m.layer3, m.layer4])


def libmtl_cross_stitch(libmtl, model):
    """LibMTL's Cross-stitch on TinyResNet holding the weights of ``model`` (the workbench's, on CROSS_STITCH_STAGES), its
    one weight per (stitch, source task) drawn at random and loaded as α_ij = c_j for every target i."""
    reference = libmtl.Cross_stitch(task_name=model.task_names, encoder_class=TinyResNet, decoders=_decoders(model), rep_grad=False,
                                    multi_input=False, device=torch.device("cpu")).train(model.training)
    encoder, theirs = model.encoder, reference.encoder
    with torch.no_grad():
        theirs.cross_unit.normal_()
        for l in range(3):
            encoder.stitches[l] = theirs.cross_unit[l].expand(len(model.task_names), -1)
    for t, task in enumerate(model.task_names):
        first = encoder.columns[task][0]
        for i in range(4):
            first[i].load_state_dict(theirs.resnet_conv[task][i].state_dict())
        first[4].load_state_dict(theirs.resnet_layer["0"][t].state_dict())
        for l in range(1, 4):
            encoder.columns[task][l].load_state_dict(theirs.resnet_layer[str(l)][t].state_dict())
    return reference


def test_cross_stitch_equals_libmtl_s_with_its_one_weight_per_source_task(libmtl):
    torch.manual_seed(0)
    model = make_architecture("cross_stitch", TASKS, CROSS_STITCH_STAGES).eval()
    reference = libmtl_cross_stitch(libmtl, model)
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    assert_same_outputs(model, reference, x)


def libmtl_ple(libmtl, model):
    """LibMTL's PLE on TinyResNet's five levels holding the weights of ``model`` (the workbench's, on PLE_LEVELS, two
    shared experts and one per task)."""
    reference = libmtl.PLE(task_name=model.task_names, encoder_class=TinyResNet, decoders=_decoders(model), rep_grad=False, multi_input=False,
                           device=torch.device("cpu"), img_size=[1, 8, 8], num_experts=[2, 1, 1, 1]).train(model.training)
    encoder, theirs = model.encoder, reference.encoder
    for level in range(5):
        for k, expert in enumerate(encoder.experts):
            theirs.shared_layer[str(level)][k].load_state_dict(expert[level].state_dict())
        for task in model.task_names:
            for k, expert in enumerate(encoder.own_experts[task]):
                theirs.specific_layer[str(level)][task][k].load_state_dict(expert[level].state_dict())
            theirs.gate_specific[task][level][0].load_state_dict(encoder.gates[task][level].state_dict())
    return reference


def test_ple_equals_libmtl_s_on_its_five_levels(libmtl):
    torch.manual_seed(0)
    model = make_architecture("ple", TASKS, PLE_LEVELS, n_experts=2, own_experts=1).eval()
    reference = libmtl_ple(libmtl, model)
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    assert_same_outputs(model, reference, x)


def _resnet18_stages(resnet) -> list[nn.Module]:
    """LibMTL's MTAN stages on its ResNet: ``layer1`` (after the stem, which goes in its body) to ``layer4``."""
    return [nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, *resnet.layer1), resnet.layer2, resnet.layer3, resnet.layer4]


def resnet18_backbone() -> Backbone:
    """LibMTL's ResNet-18 on 3 × 32 × 32 images, cut into MTAN's stages."""
    resnet18 = importlib.import_module("LibMTL.model.resnet").resnet18
    return Backbone("ResNet-18", resnet18, (512, 1, 1), inputs=(3, 32, 32), stages=_resnet18_stages)


def libmtl_mtan(libmtl, model):
    """LibMTL's MTAN on its ResNet-18 holding the weights of ``model`` (the workbench's, on :func:`resnet18_backbone`)."""
    resnet18 = importlib.import_module("LibMTL.model.resnet").resnet18
    reference = libmtl.MTAN(task_name=model.task_names, encoder_class=resnet18, decoders=_decoders(model), rep_grad=False, multi_input=False,
                            device=torch.device("cpu")).train(model.training)
    encoder, theirs = model.encoder, reference.encoder
    assert theirs.expansion == 1
    for i in range(4):
        theirs.shared_conv[i].load_state_dict(encoder.bodies[0][i].state_dict())
    theirs.shared_layer["0"][0][0].load_state_dict(encoder.bodies[0][4].state_dict())
    for l in range(4):
        if l:
            theirs.shared_layer[str(l)][0].load_state_dict(encoder.bodies[l].state_dict())
        theirs.shared_layer[str(l)][1].load_state_dict(encoder.last_blocks[l][0].state_dict())
        for t, task in enumerate(model.task_names):
            theirs.encoder_att[str(l)][t].load_state_dict(encoder.attention[task][l].state_dict())
        if l < 3:
            theirs.encoder_block_att[l].load_state_dict(encoder.blocks[l].state_dict())
    assert sum(p.numel() for p in theirs.parameters()) == sum(p.numel() for p in encoder.parameters())  # every weight loaded
    return reference


@pytest.mark.parametrize("train", [False, True])
def test_mtan_equals_libmtl_s_on_its_resnet18(libmtl, train):
    # LibMTL's MTAN hard-codes a ResNet's widths (64 to 512) and needs two blocks per layer: ResNet-18 is its smallest
    torch.manual_seed(0)
    model = make_architecture("mtan", TASKS, resnet18_backbone()).train(train)
    with torch.no_grad():  # batch norms away from their initial identity, so that eval mode's running statistics count
        for module in model.encoder.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2), module.running_var.uniform_(0.5, 2), module.weight.uniform_(0.5, 1.5), module.bias.normal_(0, 0.2)
    reference = libmtl_mtan(libmtl, model)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert_same_outputs(model, reference, x)
