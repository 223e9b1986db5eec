"""The personal taste model learns individual tastes: the known-answer test for enrollment of unseen users."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmpref.vision.taste.evaluate import evaluate_enrollment, train_default_model, train_personal_model
from mmpref.vision.taste.model import CodePrior, PersonalTasteModel, UserProfile, enroll, ratings_to_pairs
from mmpref.vision.taste.system import DemoTasteDataModule


@pytest.fixture(scope="module")
def trained():
    data = DemoTasteDataModule()
    model = train_personal_model(data, epochs=25)
    return model, data


def test_enrolled_users_beat_the_population_model_by_ten_points(trained):
    model, data = trained
    result = evaluate_enrollment(model, data, counts=(0, 8, 64))
    by_n = {row["enroll_labels"]: row for row in result["curve"]}
    print(result)
    # 20 held-out users, 200 test pairs each; with 8 labelled pairs the personal model must beat the population model
    # by >= 10 points (chance 0.5; it cannot beat the users' own noise ceiling by more than sampling error).
    assert by_n[8]["personal_accuracy"] >= by_n[8]["population_accuracy"] + 0.10
    assert by_n[64]["personal_accuracy"] <= result["noise_ceiling"] + 0.02
    assert by_n[64]["personal_accuracy"] > by_n[8]["personal_accuracy"] > by_n[0]["personal_accuracy"]
    # uncertainty shrinks as labels arrive; enrollment is far below a second
    assert by_n[0]["code_uncertainty"] > by_n[8]["code_uncertainty"] > by_n[64]["code_uncertainty"]
    assert by_n[64]["enroll_seconds_max"] < 0.5


def test_the_default_path_is_calibrated_at_8_labels():
    # The calibration claim is the default path's (early stopping, a prior and temperature fitted on validation
    # raters): the 25-epoch model above over-fits, and its ECE at 8 labels, under 0.08 with earlier installs, came
    # out at 0.083 with a fresh install of the same pinned stack (same code). The default path's ECE at 8 labels must
    # stay under 0.05 (the taste issue's goal; 0.022 measured), with the same >= 10-point gain over the population.
    data = DemoTasteDataModule(num_val_users=10)
    model, prior, _ = train_default_model(data)
    by_n = {row["enroll_labels"]: row for row in evaluate_enrollment(model, data, counts=(8,), prior=prior)["curve"]}
    print(by_n)
    assert by_n[8]["personal_ece"] < 0.05
    assert by_n[8]["personal_accuracy"] >= by_n[8]["population_accuracy"] + 0.10


def test_enrollment_fits_only_the_user_code(trained):
    model, data = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    user = data.heldout[0]
    emb = data.embeddings
    profile = enroll(
        model,
        CodePrior.from_model(model),
        emb[user.enroll.a[:8]],
        emb[user.enroll.b[:8]],
        torch.from_numpy(user.enroll.label[:8]),
        user_id="u-new",
    )
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert profile.num_labels == 8 and profile.code.shape == (model.rank,)


def test_profiles_roundtrip_and_bad_files_are_explained(tmp_path):
    profile = UserProfile("ann", np.arange(3.0), np.eye(3) * 0.5, 12)
    loaded = UserProfile.load(profile.save(tmp_path / "ann.json"))
    assert loaded.user_id == "ann" and loaded.num_labels == 12
    np.testing.assert_array_equal(loaded.covariance, profile.covariance)
    with pytest.raises(FileNotFoundError, match="mmpref enroll"):
        UserProfile.load(tmp_path / "bob.json")
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(ValueError, match="not an mmpref user profile"):
        UserProfile.load(tmp_path / "junk.json")


def test_ratings_become_pairs_with_ties():
    i, j, label = ratings_to_pairs(np.array([5.0, 3.0, 5.0]))
    assert list(zip(i, j, label, strict=True)) == [(0, 1, 1.0), (0, 2, 0.5), (1, 2, 0.0)]


def test_population_head_is_the_zero_code():
    model = PersonalTasteModel(16, num_users=3, rank=2, hidden=8).eval()
    x = torch.randn(5, 16)
    torch.testing.assert_close(model(x), model.score(x, torch.zeros(2)))
