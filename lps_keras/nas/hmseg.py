"""HMSeg's search space (Li, Dong, Yu, Yang, "When Humans Meet Machines", BMVC 2020) over MRMS.

What the paper states and this space does (as issue 27, quoting the paper's method, gives it; this
project could read only the abstract, so these are the issue's statements, not checked against the text):

* every searchable layer picks an inverted-residual block with expansion e in {1, 3, 6} and
  depthwise kernel k in {3, 5, 7}, or identity (the layer is skipped, so the depth is searched);
* every resolution branch picks its down-sampling ratio in {0.4, 0.5, 0.6};
* one path is sampled per step with straight-through Gumbel-softmax, temperature annealed
  10 -> 0.1; a cost loss pulls the expected latency, read from a per-operator lookup table of the
  target device, toward a budget R; weights and alphas are updated in the same step.

Choices the paper leaves open (only its abstract could be read here), written down:

* Searchable layers: all 17 inverted-residual blocks of MRMS's MobileNetV2 backbone (MobileNetV2's
  (t, c, n, s) table keeps the widths and strides); the stem and the LCF/LGE head are fixed.
  Identity is an option only in the 10 blocks whose input and output shapes match (stride 1, same
  width; 10 in MRMS and TinyMRMS): a block that changes stride or width cannot be skipped
  without a replacement layer.
* Resolution branches: MRMS's high, medium and low resolution branches begin at the stride-2
  entries of stages 3, 4 and 5 (C3 1/8, C4 1/16, C5 1/32). Ratio r there resizes the entry
  block's input bilinearly by 2 r (floor) before its stride-2 conv, so that r = 0.5 is exactly the
  hand-designed network and one set of weights serves all three ratios during the search.
* Straight-through sampling computes the sampled candidate only (GDAS, the second author's
  sampler): the gradient of the alphas flows through the sampled candidate's weight.
* Expected latency uses softmax(alpha) (not the Gumbel sample), summed exactly over the ratio
  combinations that set each layer's input size; the stem and head are the table's calibrated
  fixed cost, one value per option of the high-resolution branch's ratio (the LCF head runs at that
  branch's size: its MACs move by -36% / +43% at ratio 0.4 / 0.6), weighted by that ratio's
  probabilities; the medium and low branches' smaller effect on the head is left out. Cost loss:
  ``lambda * |E[lat] / R - 1|`` (:func:`~.latency_table.cost_loss`).
* Alphas start at zero (uniform); their optimiser is Adam (lr 3e-4, as DARTS/GDAS), the weights'
  SGD with momentum, both set by the caller. Derivation: argmax of each decision's alphas.
* The derived network is trained from scratch as a plain MRMS (``MRMSConfig.blocks`` /
  ``branch_ratios``); the supernet's weights are not carried over.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import keras
from keras import ops

from lps_keras.families.layers import ConvBN
from lps_keras.families.mrms.config import (
    IDENTITY,
    RATIO_STAGES,
    MRMSConfig,
    block_slots,
    level_size,
    stem_channels,
)
from lps_keras.families.mrms.model import lcf_head_model
from lps_keras.layers import BilinearResize
from lps_keras.nas.errors import NASError
from lps_keras.nas.layers import InvertedResidual, MixedOp, MixedResize
from lps_keras.nas.space import CostTerm, Decision, OpSpec, SearchSpace

EXPANSIONS = (1, 3, 6)
KERNELS = (3, 5, 7)
RATIOS = (0.4, 0.5, 0.6)


class HMSegSpace(SearchSpace):
    """HMSeg's space over an MRMS base config (width, head, classes are kept; see module doc)."""

    name = "hmseg"

    def __init__(self, base: MRMSConfig | None = None, expansions=EXPANSIONS, kernels=KERNELS, ratios=RATIOS):
        self.base = base or MRMSConfig()
        if self.base.blocks is not None or self.base.branch_ratios is not None:
            raise NASError("model.config.blocks / model.config.branch_ratios: the hmseg space searches from a "
                           "hand-designed MRMS base (preset 'mrms' or 'tinymrms', or a config without blocks and "
                           "branch_ratios), not from a searched network")
        self.ops = tuple((e, k) for e in expansions for k in kernels)
        self.ratios = tuple(float(r) for r in ratios)
        self.slots = block_slots(self.base.width_multiplier)

    def decisions(self) -> list[Decision]:
        out = []
        for slot in self.slots:
            extra = (IDENTITY,) if slot.residual else ()
            out.append(Decision(slot.prefix, self.ops + extra))
        out += [Decision(f"branch{s}_ratio", self.ratios) for s in RATIO_STAGES]
        return out

    def ratio_decision(self, stage: int) -> int:
        return len(self.slots) + RATIO_STAGES.index(stage)

    def calibration_decision(self) -> int:
        return self.ratio_decision(RATIO_STAGES[0])  # the high-resolution branch: the head's input size

    def _sizes(self, input_size, stage, entry, combo):
        """(H, W) at the input of a block of ``stage`` for ratio indices ``combo`` of stages <= stage."""
        ratios = [self.ratios[i] for i in combo] + [0.5] * (len(RATIO_STAGES) - len(combo))
        config = MRMSConfig(width_multiplier=self.base.width_multiplier, branch_ratios=ratios)
        if entry:
            level, resized = stage, stage in RATIO_STAGES
            if not resized:
                level -= 1
        else:
            level, resized = stage, False
        return tuple(level_size(v, level, config, resized) for v in input_size)

    def cost_terms(self, input_size) -> list[CostTerm]:
        terms = []
        for i, slot in enumerate(self.slots):
            entry = slot.stride == 2
            stages = [s for s in RATIO_STAGES if s <= slot.stage]
            for combo in itertools.product(range(len(self.ratios)), repeat=len(stages)):
                h, w = self._sizes(input_size, slot.stage, entry, combo)
                if min(h, w) < 1:
                    raise NASError(f"hmseg: input_size {tuple(input_size)!r} is too small: {slot.prefix} would get "
                                   f"a {h}x{w} map at ratios {[self.ratios[c] for c in combo]}")
                factors = tuple((self.ratio_decision(s), o) for s, o in zip(stages, combo))
                for j, (e, k) in enumerate(self.ops):
                    op = OpSpec.of("ir", (h, w, slot.cin), cout=slot.cout, expansion=e, kernel=k, stride=slot.stride)
                    terms.append(CostTerm(op, ((i, j),) + factors))
                if entry and slot.stage in RATIO_STAGES and self.ratios[combo[-1]] != 0.5:
                    # the resize itself, at the previous branch's size
                    hp, wp = self._sizes(input_size, slot.stage - 1, False, combo[:-1])
                    op = OpSpec.of("resize", (hp, wp, slot.cin), scale=2 * self.ratios[combo[-1]])
                    terms.append(CostTerm(op, factors))
        return terms

    def op_model(self, spec: OpSpec, deploy: bool = True):
        """``spec``'s operator as a model; by default in the form whole networks are timed in
        (:func:`~lps_keras.latency.runners.random_deploy_model`: fused convs with random biases), so that
        the table's calibration (whole network minus its operators' sum) subtracts like from like.
        ``deploy=False``: the training form (ConvBN with BN), the supernet's block."""
        image = keras.Input(shape=spec.input_shape, name="features")
        if spec.kind == "ir":
            layer = InvertedResidual(spec.input_shape[-1], spec.param("cout"), spec.param("expansion"),
                                     spec.param("kernel"), spec.param("stride"), deploy=deploy, name="op")
        elif spec.kind == "resize":
            layer = BilinearResize(scale=spec.param("scale"), name="op")
        else:
            raise NASError(f"hmseg: no operator of kind {spec.kind!r}")
        model = keras.Model(image, layer(image), name="op_" + spec.kind)
        if deploy:
            from lps_keras.latency.runners import randomize_biases

            randomize_biases(model)  # fresh biases are zero, and converters fold a zero bias away
        return model

    def build_supernet(self, input_shape=(None, None, 3), **kwargs):
        return HMSegSupernet(self, input_shape=input_shape, **kwargs)

    def reference(self):
        """The hand-designed base: MobileNetV2's (t, k = 3) in every slot, ratio 0.5 on every branch."""
        choices = [self.ops.index((slot.hidden // slot.cin, slot.kernel)) for slot in self.slots]
        choices += [self.ratios.index(0.5)] * len(RATIO_STAGES)
        return self.base, choices

    def derive_from_choices(self, choices: Sequence[int]) -> MRMSConfig:
        decisions = self.decisions()
        picked = [d.options[c] for d, c in zip(decisions, choices)]
        blocks = [p if p == IDENTITY else {"expansion": p[0], "kernel": p[1]} for p in picked[:len(self.slots)]]
        data = {**self.base.to_dict(), "blocks": blocks, "branch_ratios": list(picked[len(self.slots):])}
        return MRMSConfig.from_dict(data)


class HMSegSupernet(keras.Model):
    """The supernet: MRMS with a :class:`MixedOp` per block and a :class:`MixedResize` before each
    branch entry; ``alphas`` holds one vector per decision of the space, in its order.

    ``call(image, samples)``: ``samples`` is one straight-through weight vector per decision
    (:func:`~.gumbel.gumbel_softmax`); ``None`` runs the argmax path. Logits come upsampled to the
    input size (the output stride varies with the ratios).

    Not a registered, ``get_config``-serialisable Keras model, on purpose: it lives only inside a
    search, whose state (every variable, both optimisers, the step) is the search's ``.npz``
    checkpoint (:mod:`.search_tf`), rebuilt from the space on resume; what leaves a search is the
    derived network, a plain MRMS config that builds a registered, serialisable model.
    """

    def __init__(self, space: HMSegSpace, input_shape=(None, None, 3), **kwargs):
        kwargs.setdefault("name", "hmseg_supernet")
        super().__init__(**kwargs)
        self.space = space
        base = space.base
        decisions = space.decisions()
        self.alphas = [self.add_weight(name=f"alpha_{d.name}", shape=(len(d.options),), initializer="zeros")
                       for d in decisions]
        self.stem = ConvBN(stem_channels(base), 3, strides=2, activation="relu6", name="stage1_stem")
        self.mixed = [MixedOp(s.cin, s.cout, s.stride, d.options, name=s.prefix)
                      for s, d in zip(space.slots, decisions)]
        self.resizes = [MixedResize(space.ratios, name=f"branch{s}_resize") for s in RATIO_STAGES]
        # MRMS's own head builder: the supernet's head is the derived network's, layer for layer.
        last = {s.stage: s.cout for s in space.slots}
        self.head = lcf_head_model((last[3], last[4], last[5]), base)
        self.upsample = BilinearResize(name="logits_upsample")
        self.build((None, *input_shape))

    def build(self, input_shape):
        shape = self.stem.compute_output_shape(input_shape)
        self.stem.build(input_shape)
        stages = {}
        for slot, layer in zip(self.space.slots, self.mixed):
            if slot.stride == 2 and slot.stage in RATIO_STAGES:
                shape = (shape[0], None, None, shape[3])  # the ratio decides the size
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
            stages[slot.stage] = shape
        self.built = True

    def arch_samples(self):
        """One-hot of every decision's argmax (the derived path)."""
        return [ops.one_hot(ops.argmax(a), a.shape[0]) for a in self.alphas]

    def call(self, image, samples=None, training=None):
        samples = self.arch_samples() if samples is None else samples
        x = self.stem(image, training=training)
        stages = {}
        for i, (slot, layer) in enumerate(zip(self.space.slots, self.mixed)):
            if slot.stride == 2 and slot.stage in RATIO_STAGES:
                r = RATIO_STAGES.index(slot.stage)
                x = self.resizes[r](x, samples[self.space.ratio_decision(slot.stage)])
            x = layer(x, samples[i], training=training)
            stages[slot.stage] = x
        logits = self.head([stages[3], stages[4], stages[5]], training=training)
        return self.upsample([logits, image])
