"""Recipes: built-ins, user recipes from configuration, and rejection of bad recipes before any work."""

import pytest

from devices.ondevice.models import get_preset
from variants.errors import RecipeError
from variants.recipes import (
    BUILTIN_VARIANTS,
    check_recipe,
    parse_recipe,
    plan_distill,
    plan_prune,
    resolve_variants,
    variant_dirname,
)

TINY = get_preset("tiny").to_dict()
BASE = get_preset("base").to_dict()


def test_builtins_cover_the_article_table_and_round_trip():
    assert set(BUILTIN_VARIANTS) == {
        "original",
        "optimized",
        "pruned",
        "quantized",
        "pruned+quantized",
        "unstructured",
        "distilled",
    }
    assert BUILTIN_VARIANTS["original"].steps == ()
    assert [s.op for s in BUILTIN_VARIANTS["pruned+quantized"].steps] == ["prune", "quantize"]
    for name, recipe in BUILTIN_VARIANTS.items():
        again = parse_recipe(recipe.to_list(), f"manifest of {name}", name=name)
        assert again.steps == recipe.steps
        check_recipe(recipe, TINY)
        check_recipe(recipe, BASE)
    assert variant_dirname("pruned+quantized") == "pruned-quantized"


def test_user_recipe_fills_defaults_and_keeps_order():
    r = parse_recipe(
        {"steps": [{"step": "prune", "heads": 0.25}, {"step": "quantize"}], "description": "x"},
        "edgebench.toml: variants.small",
        name="small",
    )
    assert r.name == "small" and r.description == "x"
    prune, quant = r.steps
    assert prune.args["heads"] == 0.25 and prune.args["ffn"] == 0.6
    assert prune.args["importance"] == "activation"
    assert quant.args == {"dtype": "qint8", "modules": ("Linear", "LSTM"), "component": "acoustic",
                          "onnx_ops": ("MatMul", "Gemm")}
    assert r.to_list()[1] == {
        "step": "quantize",
        "dtype": "qint8",
        "modules": ["Linear", "LSTM"],
        "component": "acoustic",
        "onnx_ops": ["MatMul", "Gemm"],
    }


@pytest.mark.parametrize(
    "obj, needle",
    [
        ([{"step": "sparsify"}], "unknown step 'sparsify'"),
        ([{"step": "prune", "ratio": 0.5}], "unknown parameter 'ratio'"),
        ([{"step": "prune", "heads": 1.0}], "heads: must be in [0, 1)"),
        ([{"step": "prune", "ffn": -0.1}], "ffn: must be in [0, 1)"),
        ([{"step": "prune", "heads": True}], "expected a number"),
        ([{"step": "prune", "importance": "gradient"}], "must be one of activation, weight_norm"),
        ([{"step": "prune", "protect": ["encoder.embedding"]}], "not a prunable module path"),
        ([{"step": "unstructured_prune", "amount": 1.5}], "amount: must be in [0, 1)"),
        ([{"step": "quantize", "modules": ["Conv1d"]}], "unknown name(s) ['Conv1d']"),
        ([{"step": "quantize", "onnx_ops": ["Conv1d"]}], "unknown name(s) ['Conv1d']"),
        ([{"step": "quantize", "dtype": "int4"}], "must be one of qint8, float16"),
        ([{"step": "distill", "layers": 0}], "layers: must be in (0, 1]"),
        ([{"step": "distill", "steps": 100000}], "steps: must be in [0, 1000]"),
        ([{"step": "quantize"}, {"step": "prune"}], "comes after 'quantize'"),
        ([{"step": "quantize"}, {"step": "quantize"}], "comes after 'quantize'"),
        ([{"heads": 0.5}], "missing 'step'"),
        (["prune"], "expected a table"),
        ("prune", "expected a list of steps"),
        ({"stepz": []}, "unknown key 'stepz'"),
    ],
)
def test_bad_recipes_are_rejected_with_the_source_named(obj, needle):
    with pytest.raises(RecipeError) as exc:
        parse_recipe(obj, "edgebench.toml: variants.bad")
    assert str(exc.value).startswith("edgebench.toml: variants.bad: ")
    assert needle in str(exc.value)


def test_pruning_every_head_of_a_layer_is_rejected_for_this_model():
    # tiny has 2 heads per layer: 0.75 rounds to removing both (base, with 8 heads, keeps 2)
    recipe = parse_recipe([{"step": "prune", "heads": 0.75}], "cfg: variants.x", name="x")
    check_recipe(recipe, BASE)
    with pytest.raises(RecipeError, match="would remove every head of encoder.layers.1"):
        check_recipe(recipe, TINY, "cfg: variants.x")
    # protecting the layer is not enough while another layer would lose all heads
    with pytest.raises(RecipeError, match="every head"):
        check_recipe(
            parse_recipe([{"step": "prune", "heads": 0.75, "protect": ["encoder.layers.1.attn"]}], "s", "x"),
            TINY,
        )


def test_prune_plan_and_protect():
    plan = plan_prune(BASE, {"heads": 0.5, "ffn": 0.6, "protect": ("encoder.layers.0.attn",)})
    assert plan["enc_heads"] == [8] + [4] * 7 and plan["dec_heads"] == [4] * 12
    assert plan["enc_ffn"] == [410] * 8 and plan["dec_ffn"] == [410] * 12
    with pytest.raises(RecipeError, match="does not exist"):
        plan_prune(TINY, {"heads": 0.5, "ffn": 0.5, "protect": ("decoder.layers.5.ffn",)})


def test_multi_step_recipes_are_checked_on_the_config_each_step_leaves():
    # after a first prune tiny keeps 1 head per layer: a second prune of 0.5 would remove it
    twice = [{"step": "prune", "heads": 0.5, "protect": []}, {"step": "prune", "heads": 0.5}]
    recipe = parse_recipe(twice, "s")
    with pytest.raises(RecipeError, match="every head"):
        check_recipe(recipe, TINY)


def test_distill_plan_keeps_first_layer_and_spreads_the_rest():
    assert plan_distill(BASE, {"layers": 0.5}) == {"encoder": [0, 2, 5, 7], "decoder": [0, 2, 4, 7, 9, 11]}
    assert plan_distill(TINY, {"layers": 0.5}) == {"encoder": [0], "decoder": [0]}


def test_structural_steps_need_the_reference_structure():
    with pytest.raises(RecipeError, match="needs the reference Sambert structure"):
        check_recipe(BUILTIN_VARIANTS["pruned"], {"hidden": 64})
    check_recipe(BUILTIN_VARIANTS["quantized"], None)
    check_recipe(BUILTIN_VARIANTS["unstructured"], None)


def test_resolve_variants():
    user = {"small": parse_recipe([{"step": "quantize"}], "s", "small")}
    names = [r.name for r in resolve_variants(["original", "small", "original"], user)]
    assert names == ["original", "small"]
    with pytest.raises(RecipeError, match="unknown variant 'tiny-pruned'"):
        resolve_variants(["tiny-pruned"])
