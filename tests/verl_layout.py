"""A verl run's folder as verl 0.9.1 itself writes it, for tests/test_verl_finish.py (run in verl's venv):

    python tests/verl_layout.py RUN_DIR STEPS

* a tiny random Qwen2 (from a config) wrapped in FSDP on CPU (gloo, world size 1), one AdamW step on
  random tokens, saved by verl's `FSDPCheckpointManager.save_checkpoint` into
  `RUN_DIR/verl/checkpoints/global_step_STEPS/actor/` (as `RayPPOTrainer._save_checkpoint` lays it out),
  with the trained float32 weights in `RUN_DIR/verl/reference.safetensors`;
* STEPS lines of per-step metrics through verl's `Tracking(default_backend=["file"])` with
  `VERL_FILE_LOGGER_PATH` = `RUN_DIR/verl/metrics.jsonl` (what the generated config sets);
* `python -m verl.model_merger merge --backend fsdp` of that checkpoint into `RUN_DIR/verl/hf/`;
* `python -m pip freeze --all` of this venv into `RUN_DIR/verl/versions.txt`, as the train job writes it.
"""

import os
import subprocess
import sys
from pathlib import Path


def tokenizer(folder: Path):
    """A word-level tokenizer of 64 tokens (tokenizers + transformers, no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, **{f"w{i}": i + 2 for i in range(62)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")


def main(run_dir: Path, steps: int) -> None:
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from transformers import AutoModelForCausalLM, Qwen2Config
    from verl.utils.checkpoint.fsdp_checkpoint_manager import FSDPCheckpointManager
    from verl.utils.tracking import Tracking

    folder = run_dir / "verl"
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29513")
    dist.init_process_group("gloo", rank=0, world_size=1)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        architectures=["Qwen2ForCausalLM"],
    )
    model = AutoModelForCausalLM.from_config(config)
    fsdp = FSDP(model, device_id=torch.device("cpu"), use_orig_params=True)
    optimizer = torch.optim.AdamW(fsdp.parameters(), lr=1e-2)
    ids = torch.randint(2, 64, (4, 12))
    fsdp(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    manager = FSDPCheckpointManager(
        model=fsdp, optimizer=optimizer, lr_scheduler=None, processing_class=tokenizer(folder)
    )
    actor = folder / "checkpoints" / f"global_step_{steps}" / "actor"
    manager.save_checkpoint(local_path=str(actor), global_step=steps)
    with FSDP.summon_full_params(fsdp):
        trained = {name: p.detach().clone().contiguous() for name, p in model.named_parameters()}
    save_file(trained, folder / "reference.safetensors")  # the trained float32 weights
    dist.destroy_process_group()

    os.environ["VERL_FILE_LOGGER_PATH"] = str(folder / "metrics.jsonl")
    tracking = Tracking(project_name="clipbench", experiment_name="fspo-seed0", default_backend=["file"])
    for step in range(1, steps + 1):
        tracking.log(
            data={
                "critic/score/mean": 0.25 * step,
                "response_length/mean": 10.5 + step,
                "response_length/max": 16.0,
                "response_length/clip_ratio": 0.125,
                "actor/clipbench_clip_frac": 0.2,
                "actor/grad_norm": 0.75,
            },
            step=step,
        )
    tracking.finish()
    merge = [sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp"]
    merge += ["--local_dir", str(actor), "--target_dir", str(folder / "hf")]
    subprocess.run(merge, check=True)
    with open(folder / "versions.txt", "w") as out:  # verl.smk's verl_train, before verl starts
        subprocess.run([sys.executable, "-m", "pip", "freeze", "--all"], check=True, stdout=out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
