"""model_choice.py (the dialog's model list) and the refusal of a model that is not installed, run
with the host Python; the list comes from a real engine's `hello`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugin" / "neural_style"))

import model_choice
from model_choice import Model
from settings import Settings, SettingsError, validate

from engine import weights
from engine.service.server import Server
from nst_common.session import open_session


def test_the_list_comes_from_a_real_hello(
    make_server: Callable[..., Server], nst_env: dict[str, str], tmp_path: Path, zoo: ModuleType
) -> None:
    stand_in = tmp_path / "mosaic.pth"
    torch.save(zoo.johnson_state_dict(zoo.johnson_model()), stand_in)  # pinned on import, never run
    weights.import_file("johnson_mosaic", stand_in)
    sock, hello = open_session(make_server().address, None)
    sock.close()

    known = model_choice.known_models(hello)
    assert set(known) == {"johnson", "adain", "cyclegan"}  # Gatys runs no models
    assert [(m.id, m.weights) for m in known["adain"]] == [("published", ("adain_vgg", "adain_decoder"))]
    johnson = known["johnson"]
    assert [m.id for m in johnson] == list(weights.load_manifest().models("johnson"))
    assert [m.id for m in johnson if m.installed] == ["mosaic"]
    assert johnson[0] == Model("candy", False, ("johnson_candy",), None)  # the bundle's size is unknown
    assert [m.label() for m in johnson[:2]] == ["candy — download", "mosaic (installed)"]
    assert model_choice.selected(johnson, "") == "mosaic"  # the first installed one
    assert model_choice.selected(johnson, "udnie") == "udnie"
    assert model_choice.selected(johnson, "no-such-model") == "mosaic"
    assert model_choice.to_download(known, "johnson", "candy") == johnson[0]
    assert model_choice.to_download(known, "johnson", "mosaic") is None  # installed
    assert model_choice.to_download(known, "johnson", "no-such-model") is None
    assert model_choice.to_download(known, "gatys", "candy") is None


def test_a_model_of_several_paintings_offers_them_to_the_mix(
    make_server: Callable[..., Server], nst_env: dict[str, str], tmp_path: Path
) -> None:
    import torch

    from engine.training.johnson import new_net

    file = tmp_path / "model.pth"
    torch.save(new_net(0, styles=2).upstream_state(), file)
    weights.install_trained("johnson_both", "johnson", file, {"styles": ["dawn", "dusk"]}, replace=False)
    sock, hello = open_session(make_server().address, None)
    sock.close()

    johnson = model_choice.known_models(hello)["johnson"]
    both = next(m for m in johnson if m.id == "both")
    assert both.installed and both.styles == ("dawn", "dusk")
    assert model_choice.mix_hint(johnson, "both") == "dawn=0.5, dusk=0.5"  # the dialog's example
    assert model_choice.mix_hint(johnson, "candy") == ""  # one painting: the field is hidden


def test_labels_sizes_and_malformed_entries() -> None:
    assert Model("mosaic", False, ("johnson_mosaic",), 6_710_886).label() == "mosaic — download, 6.4 MiB"
    hello = {
        "capabilities": {
            "methods": {
                "gatys": {"needs_style": True},
                "johnson": {
                    "models": [
                        {"id": "candy", "installed": True},  # an engine that sends no weights or size
                        {"id": "", "installed": True},
                        {"installed": False},
                        "udnie",
                        {"id": "mosaic", "installed": "yes", "weights": [3], "size": True},
                    ]
                },
                "cyclegan": {"models": "style_monet"},
            }
        }
    }
    assert model_choice.known_models(hello) == {
        "johnson": [
            Model("candy", True, ("johnson_candy",), None),
            Model("mosaic", False, ("johnson_mosaic",), None),
        ]
    }
    assert model_choice.selected([], "candy") == ""


@pytest.mark.parametrize(
    ("model", "available", "fragments"),
    [
        (
            "mosaic",
            ["candy"],
            ["'mosaic' is not installed", "`nst models pull johnson_mosaic`", "Installed: candy."],
        ),
        (
            "mosaic",
            [],
            ["'mosaic' is not installed", "`nst models pull johnson_mosaic`", "the dialog's “Model” list"],
        ),
    ],
)
def test_a_model_that_is_not_installed_names_the_pull_command(
    model: str, available: list[str], fragments: list[str]
) -> None:
    with pytest.raises(SettingsError) as err:
        validate(Settings.of(method="johnson", model=model), {"johnson": available, "gatys": None})
    for fragment in fragments:
        assert fragment in str(err.value)


def test_with_no_model_installed_or_chosen_the_engine_names_its_default() -> None:
    """The plug-in leaves the choice to the engine, whose error names the exact weights to pull
    (tests/e2e/test_methods_e2e.py runs that through GIMP)."""
    s = validate(Settings.of(method="johnson"), {"johnson": [], "gatys": None})
    assert s.get("model") == "" and "model" not in s.engine_params()
