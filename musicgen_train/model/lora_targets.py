"""LoRA's names without peft or torch: what a config may list, for validation at composition."""

ADAPTER_DIR = "adapter"  # the LoRA adapter of an export with export.merge_lora=false
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
PER_CODEBOOK = ("lm_heads", "embed_tokens")  # ModuleLists: one layer per codebook
OUTSIDE_DECODER = ("enc_to_dec_proj",)
ALLOWED_TARGETS = (*DEFAULT_TARGETS, *PER_CODEBOOK, *OUTSIDE_DECODER)
