"""Every plug-in's options are one declared pydantic model; the registry and the config hash read it."""

from typing import Literal, get_args, get_origin

import pytest
from pydantic import ValidationError

from methods.base import AcquisitionStrategy
from methods.options import Configurable, PluginOptions, describe
from methods.preparation import PREPARATIONS
from methods.registry import ACQUISITIONS, ADAPTATIONS, Registry, with_defaults

REGISTRIES = {"acquisition": ACQUISITIONS, "adaptation": ADAPTATIONS, "preparation": PREPARATIONS}
BUILT_IN = [(kind, name) for kind, registry in REGISTRIES.items() for name in registry.names()
            if registry.get(name).__module__.startswith("methods.")]  # not the test-only plug-ins


def _model(kind: str, name: str) -> type[PluginOptions]:
    return REGISTRIES[kind].options_model(name)


@pytest.mark.parametrize("kind, name", BUILT_IN)
def test_options_are_declared_with_a_default_for_every_field(kind, name):
    cls = REGISTRIES[kind].get(name)
    assert issubclass(cls, Configurable) and issubclass(cls.Options, PluginOptions)
    assert cls.Options.model_config["extra"] == "forbid" and cls.Options.model_config["frozen"]
    missing = [option for option, field in cls.Options.model_fields.items() if field.is_required()]
    assert not missing, f"{name}: options without a default: {missing}"


@pytest.mark.parametrize("kind, name", BUILT_IN)
def test_resolved_options_round_trip_through_the_model(kind, name):
    registry, model = REGISTRIES[kind], _model(kind, name)
    resolved = registry.resolve_options(name, {})
    assert list(resolved) == list(model.model_fields)
    assert model.model_validate(resolved).model_dump() == resolved
    assert registry.resolve_options(name, resolved) == resolved
    plugin = registry.create(name)
    assert isinstance(plugin.options, model) and plugin.options.model_dump() == resolved


def _bad_values(field) -> list:
    """A wrong kind of value, and values just outside the field's declared bounds or choices."""
    bad = [object()]
    for meta in field.metadata:
        for key, step in (("ge", -1), ("gt", 0), ("le", 1), ("lt", 0)):
            if getattr(meta, key, None) is not None:
                bad.append(getattr(meta, key) + step)
    literal = [a for a in (field.annotation, *get_args(field.annotation)) if get_origin(a) is Literal]
    return bad + (["no-such-choice"] if literal else [])


@pytest.mark.parametrize("kind, name", BUILT_IN)
def test_a_bad_value_names_the_plugin_the_option_and_what_it_must_be(kind, name):
    registry, model = REGISTRIES[kind], _model(kind, name)
    for option, field in model.model_fields.items():
        for value in _bad_values(field):
            with pytest.raises(ValueError) as err:
                registry.create(name, **{option: value})
            message = str(err.value)
            assert message.startswith(f"{registry.kind} {name!r}: {option} must be ")
            assert describe(field) in message and f"got {value!r}" in message


@pytest.mark.parametrize("kind, name", BUILT_IN)
def test_an_unknown_option_gets_the_closest_one(kind, name):
    registry, fields = REGISTRIES[kind], list(_model(kind, name).model_fields)
    if not fields:
        with pytest.raises(ValueError, match=r"got unknown option\(s\) 'bogus'; accepted: none"):
            registry.create(name, bogus=1)
        return
    typo = fields[-1] + "x"
    with pytest.raises(ValueError) as err:
        registry.create(name, **{typo: 1})
    assert str(err.value) == (f"{registry.kind} {name!r} got unknown option(s) {typo!r} "
                              f"(did you mean {fields[-1]!r}?); accepted: {fields}")


def test_messages_keep_the_why():
    with pytest.raises(ValueError) as err:
        ACQUISITIONS.create("bald", samples=1)
    assert str(err.value) == ("acquisition strategy 'bald': samples must be an integer >= 2 "
                              "(dropout passes; one pass has no disagreement), got 1")
    with pytest.raises(ValueError, match=r"'probcover': delta must be > 0 or None \(.*None: the purity rule\)"):
        ACQUISITIONS.create("probcover", delta=0)
    with pytest.raises(ValueError, match=r"'dropquery': backend must be one of \['numpy', 'torch'\] or None"):
        ACQUISITIONS.create("dropquery", backend="jax")
    with pytest.raises(ValueError, match="'typiclust': k_nn must be an integer >= 1.*got True"):
        ACQUISITIONS.create("typiclust", k_nn=True)  # a bool is not an integer


def test_options_become_attributes_and_configure_derives_the_rest():
    typiclust = ACQUISITIONS.create("typiclust", feature_space="class_guided", k_nn=7)
    assert typiclust.k_nn == 7 == typiclust.options.k_nn and typiclust.feature_space == "class_guided"
    assert "probs" in typiclust.requires and "probs" not in ACQUISITIONS.create("typiclust").requires
    pcb = ACQUISITIONS.create("pcb", base="coreset", base_options={"working_mb": 8})
    assert pcb.base_name == "coreset" and pcb.base.working_mb == 8 and "probs" in pcb.requires
    coop = ADAPTATIONS.create("coop", descriptions="ensemble", epochs=3, lr=0.5)
    assert "descriptions" in coop.requires and "descriptions" not in ADAPTATIONS.create("coop").requires
    assert coop.recipe.epochs == 3 and coop.recipe.lr == 0.5 and coop.options.recipe == "coop_al"
    with pytest.raises(ValidationError):
        coop.options.epochs = 4  # frozen: what was validated is what runs


def test_numbers_keep_the_type_the_config_gave():
    """``lr: 1`` must hash as it did before the models: no int -> float coercion in the resolved options."""
    resolved = ADAPTATIONS.resolve_options("linear_probe", {"lr": 1, "text_anchor": 0})
    assert type(resolved["lr"]) is int and type(resolved["text_anchor"]) is int
    assert type(resolved["temperature"]) is float  # a default stays as declared
    assert ACQUISITIONS.resolve_options("probcover", {"purity_grid": [1, 0.5]})["purity_grid"] == [1, 0.5]
    assert ACQUISITIONS.create("probcover", purity_grid=[1, 0.5]).purity_grid == [0.5, 1.0]


def test_with_defaults_derives_a_model_that_keeps_the_constraints():
    coop = ADAPTATIONS.get("coop")
    derived = with_defaults(n_ctx=3)(type("Derived", (coop,), {}))
    assert issubclass(derived.Options, coop.Options) and derived.Options is not coop.Options
    assert derived.Options().n_ctx == 3 and coop.Options().n_ctx == 16
    assert derived(n_ctx=5).prompt.n_ctx == 5 and derived().prompt.n_ctx == 3
    with pytest.raises(ValueError, match="n_ctx must be an integer >= 1"):
        derived(n_ctx=0)
    with pytest.raises(ValueError, match="n_ctx must be an integer >= 1"):
        with_defaults(n_ctx=0)(type("BadDefault", (coop,), {}))
    with pytest.raises(TypeError, match="no such constructor option"):
        with_defaults(n_ctxx=3)(type("Bad", (coop,), {}))


def test_a_plugin_with_a_keyword_constructor_still_works():
    """Plug-ins written before ``Options`` (README's example): the signature is read as the options."""
    registry = Registry("test strategy")

    @registry.register("legacy")
    class Legacy(AcquisitionStrategy):
        def __init__(self, temperature: float = 1.0, depth: int = 2):
            self.temperature, self.depth = temperature, depth

        def select(self, ctx, budget, rng):
            raise NotImplementedError

    @with_defaults(depth=5)
    class Deeper(Legacy):
        pass

    assert registry.resolve_options("legacy", {"depth": 3}) == {"temperature": 1.0, "depth": 3}
    assert registry.create("legacy", temperature=2).temperature == 2 and Deeper().depth == 5
    with pytest.raises(ValueError, match=r"'legacy' got unknown option\(s\) 'temprature' \(did you mean 'temperature'"):
        registry.create("legacy", temprature=2)
