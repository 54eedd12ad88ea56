"""Hugging Face `datasets` objects and save_to_disk folders go in like files do, held-out split included."""

import json

import datasets

from conftest import make_pairs
from robalign.cli import main
from robalign.config import build_config
from robalign.data import load_pairs
from robalign.trainer import Trainer


def _rows(n=20):
    return [p.to_row() for p in make_pairs(n)]


def _cfg(tmp_path, **data):
    return build_config({"model": {"name": "tiny-llama", "lora_r": 0}, "data": {"max_length": 64, **data},
                         "train": {"output_dir": str(tmp_path / "run"), "batch_size": 2, "max_steps": 1,
                                   "progress": False, "eval_at_start": False}})


def test_a_dataset_object_trains_with_a_held_out_split_drawn_from_it(tmp_path):
    ds = datasets.Dataset.from_list(_rows(20))
    trainer = Trainer(_cfg(tmp_path, eval_fraction=0.25), train_pairs=ds)
    assert len(trainer.train_data) == 15 and len(trainer.eval_data) == 5
    summary = trainer.train()
    assert summary["final"]["eval/pairs"] == 5


def test_a_dataset_dict_reads_its_train_split_and_a_given_eval_dataset(tmp_path):
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(_rows(12)),
                               "test": datasets.Dataset.from_list(_rows(4))})
    trainer = Trainer(_cfg(tmp_path), train_pairs=dd, eval_pairs=dd["test"])
    assert len(trainer.train_data) == 12 and len(trainer.eval_data) == 4


def test_save_to_disk_folders_load_like_files(tmp_path):
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(_rows(10)).save_to_disk(str(folder))
    pairs = load_pairs(folder).pairs
    assert [p.id for p in pairs] == [p.id for p in make_pairs(10)]
    args = ["train", "--model", "tiny-llama", "--data", str(folder), "--max-steps", "1", "--batch-size", "2",
            "--progress", "false", "--max-length", "64", "--lora-r", "0", "--output-dir", str(tmp_path / "run")]
    assert main(args) == 0
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["eval/pairs"] == 1


def test_a_folder_that_is_not_a_saved_dataset_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    args = ["train", "--model", "tiny-llama", "--data", str(tmp_path / "plain"), "--output-dir",
            str(tmp_path / "run")]
    assert main(args) == 2
    assert "not one written by datasets' save_to_disk" in capsys.readouterr().err
