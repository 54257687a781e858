"""Weight entries resolve only inside the registered model folders (resolved paths, per folder)."""
import os

import pytest

import ks_fixtures as F
from kontext_sliders.core.weights_io import WeightsFormatError
from kontext_sliders.core.kontinuous.weights import save_official_folder, save_single_file

pytestmark = pytest.mark.comfyui


@pytest.fixture
def folders(tmp_path):
    """models/kontext_sliders (registered), a sibling kontext_sliders_evil and an outside folder."""
    F.import_comfyui()
    import folder_paths

    from kontext_sliders.nodes.model_folder import FOLDER_NAME
    models = tmp_path / "models"
    registered = models / "kontext_sliders"
    sibling = models / "kontext_sliders_evil"
    outside = tmp_path / "outside"
    for folder in (registered, sibling, outside):
        folder.mkdir(parents=True)
        save_single_file(F.tiny_projector_weights(seed=2), folder / "w.safetensors")
    save_official_folder(F.tiny_projector_weights(seed=3), registered / "release")
    saved = folder_paths.folder_names_and_paths.get(FOLDER_NAME)
    folder_paths.folder_names_and_paths[FOLDER_NAME] = ([str(registered)], {".safetensors", ".pth"})
    try:
        yield dict(registered=registered, sibling=sibling, outside=outside)
    finally:
        if saved is None:
            folder_paths.folder_names_and_paths.pop(FOLDER_NAME)
        else:
            folder_paths.folder_names_and_paths[FOLDER_NAME] = saved


def test_listed_entries_resolve_inside(folders):
    from kontext_sliders.nodes.model_folder import list_weight_entries, resolve_weight_entry
    assert list_weight_entries() == ["release/", "w.safetensors"]
    for entry in list_weight_entries():
        assert resolve_weight_entry(entry).startswith(str(folders["registered"].resolve()))


@pytest.mark.parametrize("entry", [
    "../kontext_sliders_evil/w.safetensors",  # a sibling whose name starts with the folder's name
    "../kontext_sliders/../kontext_sliders_evil/w.safetensors",
    "release/../../kontext_sliders_evil/w.safetensors",
    "..\\kontext_sliders_evil\\w.safetensors",
])
def test_dot_dot_entries_are_refused(folders, entry):
    from kontext_sliders.nodes.model_folder import resolve_weight_entry
    with pytest.raises(WeightsFormatError, match="refused.*no '..'"):
        resolve_weight_entry(entry)


def test_absolute_entries_are_refused(folders):
    from kontext_sliders.nodes.model_folder import resolve_weight_entry
    for entry in (str(folders["sibling"] / "w.safetensors"), str(folders["outside"] / "w.safetensors")):
        with pytest.raises(WeightsFormatError, match="no absolute path"):
            resolve_weight_entry(entry)


def test_symlinks_out_of_the_folder_are_refused_and_not_listed(folders):
    from kontext_sliders.nodes.model_folder import list_weight_entries, resolve_weight_entry
    registered = folders["registered"]
    os.symlink(folders["sibling"], registered / "to_sibling")  # a folder link out
    os.symlink(folders["outside"] / "w.safetensors", registered / "out.safetensors")  # a file link out
    os.symlink(registered / "w.safetensors", registered / "inside.safetensors")  # a link that stays inside
    os.symlink(registered, registered / "loop")  # a cycle must not hang the listing
    assert list_weight_entries() == ["inside.safetensors", "release/", "w.safetensors"]
    for entry in ("to_sibling/w.safetensors", "out.safetensors"):
        with pytest.raises(WeightsFormatError, match="outside the model folders"):
            resolve_weight_entry(entry)
    assert resolve_weight_entry("inside.safetensors") == str((registered / "w.safetensors").resolve())


def test_prefix_check_of_old_was_the_hole(folders):
    # the old check was startswith(base) on the unresolved path: '<base>_evil/...' passed it
    from kontext_sliders.nodes.model_folder import resolve_weight_entry
    assert str(folders["sibling"]).startswith(str(folders["registered"]))
    with pytest.raises(WeightsFormatError):
        resolve_weight_entry("../kontext_sliders_evil/w.safetensors")


def test_missing_entry_is_a_clear_error(folders):
    from kontext_sliders.nodes.model_folder import resolve_weight_entry
    with pytest.raises(WeightsFormatError, match="'nope.safetensors' not found.*refresh"):
        resolve_weight_entry("nope.safetensors")
