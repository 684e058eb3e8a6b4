"""The embedded test model: nothing can be downloaded, so at first start the runtime builds a
tiny causal transformer (a 2-layer Llama) with a byte-level BPE tokenizer trained on the
small text this package ships (corpus.txt: short fables and chat turns), trains it for a
few seconds, and saves it as a Hugging Face model directory. It is then loaded by the same
code as any real model. It emits plausible characters, not sense: a test model.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib import resources
from pathlib import Path

import torch

# The chat template's markers; the shipped text uses them, so the model learns the turns.
PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|eos|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
VOCAB_SIZE = 512
CONTEXT_LENGTH = 512
TRAIN_WINDOW = 64
TRAIN_BATCH = 16
LEARNING_RATE = 3e-3


def corpus() -> str:
    return resources.files("dropwire.runtime.textgen").joinpath("corpus.txt").read_text(encoding="utf-8")


def build_default_model(path: Path, *, steps: int, seed: int) -> float:
    """Train and save the test model at ``path`` (written aside, then renamed into place, so
    a crash never leaves half a model); returns the final training loss."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    text = corpus()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        [text],
        trainers.BpeTrainer(
            vocab_size=VOCAB_SIZE,
            special_tokens=[PAD, BOS, EOS, *ROLE_TOKENS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = CONTEXT_LENGTH
    config = LlamaConfig(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=CONTEXT_LENGTH,
        pad_token_id=bpe.token_to_id(PAD),
        bos_token_id=bpe.token_to_id(BOS),
        eos_token_id=bpe.token_to_id(EOS),
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    data = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    loss = torch.tensor(float("nan"))
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(data) - TRAIN_WINDOW, (TRAIN_BATCH,), generator=generator)
        batch = torch.stack([data[start : start + TRAIN_WINDOW] for start in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return loss.item()
