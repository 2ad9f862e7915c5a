"""tversky_keras.saving: loading a saved model, and what a file that is none is told."""

import zipfile

import pytest

from tversky_keras.saving import load_saved_model


@pytest.mark.parametrize("content", ["text", "zip without a config"])
def test_a_file_that_is_not_a_keras_model_is_named(tmp_path, content):
    path = tmp_path / "model.keras"
    if content == "text":
        path.write_text("not a model")
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("metadata.json", "{}")
    with pytest.raises(ValueError, match=f"{path}: not a readable Keras model"):
        load_saved_model(path)
