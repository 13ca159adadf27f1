"""TRL's ``GRPOTrainer`` on workload W1, as its users run it, driven one step at a time.

``Trainer.train()`` owns its loop, so it runs in a background thread and a callback holds it at
the start of every optimizer step until the harness asks for one; the time from
``on_step_begin`` to ``on_step_end`` is the step (generation, reward, reference logprobs,
forward/backward passes and the optimizer step; TRL's logging afterwards is left out, as
rayppo's is).
"""

from __future__ import annotations

import queue
import threading
import time

from benchmarks.w1 import Workload

# Samples per forward/backward micro-batch (gradient accumulation makes one optimizer step of
# the whole batch): TRL's usual way of fitting a large batch.
MICRO_BATCH = 32


def _reward_fn():
    from pipeline.rewards import resolve_reward_fn

    verifier = resolve_reward_fn("builtin", "arithmetic")

    def arithmetic_reward(prompts, completions, answer, **_):
        scores = []
        for prompt, completion, ans in zip(prompts, completions, answer):
            prompt_text = prompt[-1]["content"] if isinstance(prompt, list) else prompt
            text = completion[-1]["content"] if isinstance(completion, list) else completion
            scores.append(float(verifier(prompt_text, text, ans)))
        return scores

    return arithmetic_reward


def _gate_callback():
    from transformers import TrainerCallback

    class StepGate(TrainerCallback):
        """Blocks the training thread before each step until ``release()``; reports step times."""

        def __init__(self):
            self.go = threading.Semaphore(0)
            self.times: queue.Queue = queue.Queue()
            self.stop = False
            self.started = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.go.acquire()
            if self.stop:
                control.should_training_stop = True
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.put(time.perf_counter() - self.started)
            if self.stop:
                control.should_training_stop = True

    return StepGate()


class TRLRunner:
    name = "trl"

    def __init__(self, w: Workload, model_path: str, run_dir: str, rows: list, max_steps: int):
        import torch
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import GRPOConfig, GRPOTrainer

        start = time.perf_counter()
        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            torch.set_num_threads(w.threads)
        samples = w.samples
        micro = min(MICRO_BATCH, samples)
        if samples % micro:
            raise ValueError(f"{w.name}: {samples} samples per step is not a multiple of {micro}")
        args = GRPOConfig(
            output_dir=run_dir,
            per_device_train_batch_size=micro,
            gradient_accumulation_steps=samples // micro,
            num_generations=w.group,
            max_completion_length=w.completion_tokens,
            # Forced length, as rayppo's ignore_eos: EOS is suppressed until the last token.
            generation_kwargs={"min_new_tokens": w.completion_tokens},
            temperature=1.0,
            top_p=1.0,
            beta=w.kl_coef,
            num_iterations=1,
            learning_rate=w.lr,
            lr_scheduler_type="constant",
            weight_decay=0.0,
            max_grad_norm=1.0,
            seed=w.seed,
            bf16=w.bf16,
            use_cpu=not on_gpu,
            use_vllm=False,
            max_steps=max_steps,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        dtype = torch.bfloat16 if w.bf16 else torch.float32
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        dataset = Dataset.from_list([{"prompt": r.messages, "answer": r.answer} for r in rows])
        self.gate = _gate_callback()
        self.trainer = GRPOTrainer(
            model=model,
            reward_funcs=_reward_fn(),
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[self.gate],
        )
        from transformers.trainer_callback import PrinterCallback

        self.trainer.remove_callback(PrinterCallback)  # per-step log lines; metrics stay in state
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._train, daemon=True, name="trl-train")
        self.thread.start()
        self.setup_seconds = time.perf_counter() - start

    def _train(self) -> None:
        try:
            self.trainer.train()
        except BaseException as exc:  # surfaced by step()
            self.error = exc
            self.gate.times.put(None)

    def step(self) -> dict:
        self.gate.go.release()
        seconds = self.gate.times.get()
        if seconds is None:
            raise RuntimeError(f"TRL training thread failed: {self.error!r}") from self.error
        logs = [h for h in self.trainer.state.log_history if "loss" in h or "kl" in h]
        last = logs[-1] if logs else {}
        return {"seconds": seconds, "kl/mean": last.get("kl"), "reward/mean": last.get("reward")}

    def close(self) -> None:
        self.gate.stop = True
        self.gate.go.release()
        self.thread.join(timeout=60)
