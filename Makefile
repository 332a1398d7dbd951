# rsgen_qgis: `make demo` and `make test` install what they need on a fresh Debian 12 machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SYSPY := /usr/bin/python3
GPU ?= 0
DATA ?= data
APT_PACKAGES := qgis python3-qgis qgis-providers python3-rasterio python3-pyproj python3-venv xvfb
RUNTIME_REQ := $(if $(filter 1,$(GPU)),requirements-gpu.txt,requirements.txt)
export QT_QPA_PLATFORM ?= offscreen
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install system venv demo test bench bench-gpu bench-ae seams eval eval-kid eval-latent train latents latents-maps256 train-latent distill-latent progressive-latent export-latent quantize-latent weak-latent prompt-bank-latent quantize-ae train-gpu gpu-slim gpu-unslim package clean help

help:
	@echo "make demo     install, then generate a georeferenced image with the default model (rsgen-base-1)"
	@echo "make test     install, then run the tests"
	@echo "make install  [GPU=1] system packages (apt) + Python venv with --system-site-packages"
	@echo "make bench    speed figures (ORT vs torch, s/tile, large areas; latent models: s per 256 px tile, Mpx/s, RSS)"
	@echo "make bench-gpu GPU=1  GPU figures (ORT-CUDA vs PyTorch-CUDA, fp16, SD-class UNet; needs CUDA)"
	@echo "make seams    seam metric: fused large-area path vs naive tiling (real model)"
	@echo "make eval DATA=dir   evaluate rsgen-base (the 64 px pixel model) on prepared real data"
	@echo "make eval-kid DATA=dir MODELS=\"models/rsgen-base ...\"  KID in ImageNet-pretrained features vs held-out real (docs/EVAL.md)"
	@echo "make eval-latent DATA=dir  rsgen-base-1 and rsgen-base: KID, class fidelity, usefulness, layouts, SR x4 (docs/EVAL.md)"
	@echo "make train DATA=dir  retrain models/rsgen-base from prepared data (CPU recipe)"
	@echo "make pack DATA=dir   compact training data in parts (runs/pack/train.part*.npz) for a GPU machine"
	@echo "make package build/rsgen_qgis.zip for QGIS's 'Install from ZIP'"

install: system venv

# Debian's QGIS, GDAL, rasterio and pyproj; installed only when missing (needs root or sudo).
system: .stamps/system
.stamps/system:
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y --no-install-recommends $(APT_PACKAGES); \
	fi
	@mkdir -p .stamps && touch $@

venv: $(VENV)/.installed-$(GPU)
$(VENV)/.installed-$(GPU): $(RUNTIME_REQ) requirements-dev.txt requirements-qt6.txt constraints.txt .stamps/system
	@[ -x $(PY) ] || $(SYSPY) -m venv --system-site-packages $(VENV)
	@if [ "$(GPU)" = 1 ]; then $(PY) -m pip uninstall -y -q onnxruntime || true; else $(PY) -m pip uninstall -y -q onnxruntime-gpu || true; fi
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -r $(RUNTIME_REQ) -r requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check --upgrade --target $(VENV)/qt6 -r requirements-qt6.txt
	@rm -f $(VENV)/.installed-*; touch $@

demo: install
	$(PY) -m rsgen_qgis demo --out out/demo.tif

test: install
	QGIS_CUSTOM_CONFIG_PATH=$$(mktemp -d) $(PY) -m pytest -q tests

bench: install
	$(PY) tools/bench.py $(BENCH_ARGS)
	$(PY) tools/bench_latent.py $(BENCH_LATENT_ARGS)

bench-gpu: install
	$(PY) tools/bench_gpu.py --json runs/bench_gpu.json

# the shipped autoencoder on held-out scenes beside 8x bicubic, ONNX vs the published torch weights (TAESD=gitdir)
DATA512 ?=
TAESD ?=
bench-ae: install
	$(PY) tools/bench_autoencoder.py --data $(DATA) $(if $(DATA512),--data512 $(DATA512)) $(if $(TAESD),--weights $(TAESD))

seams: install
	$(PY) tools/seams.py

eval: install
	$(PY) -m rsgen_qgis.training.evaluate --data $(DATA) --model models/rsgen-base --out runs/eval \
	    --clf-steps 3000 --clf-cosine --seg-steps 600

# KID in the features of an ImageNet-pretrained EfficientNet-Lite0 (docs/EVAL.md): each package's class-prompt tiles
# (through the run-time engine, at its native tile) vs held-out real AID scenes, beside the real-vs-real floor and
# blurred / JPEG / noisy real scenes. KID_ARGS: e.g. --per-class 34 --steps 20 --threads 2
MODELS ?= models/rsgen-base
KID_ARGS ?=
eval-kid: install
	$(PY) -m rsgen_qgis.training.judge kid --data $(DATA) $(foreach m,$(MODELS),--model $(m)) \
	    --out runs/judge/kid.json $(KID_ARGS)

# The latent model's figures beside 0.5.0's (models/rsgen-base-1/MODEL_CARD.md, docs/EVAL.md): KID, class fidelity by
# the probe judge, usefulness as training data (linear probe), layout fidelity and super-resolution x4; the 1.0
# class tiles at 4 m (the GSD its AID scenes were trained at), 0.5.0's at its own 64 px tile, with class guidance
# at its default and off. EVAL_ARGS: the sizes (the card's runs: these defaults).
EVAL_ARGS ?= --per-class 8 --limit-real 40 --threads 2
eval-latent: install
	$(PY) -m rsgen_qgis.training.judge kid --data $(DATA) --model models/rsgen-base-1 --gsd 4 --fidelity \
	    --layouts 60 --superres 48 --out runs/judge/eval_rsgen-base-1.json --grids runs/judge/grids $(EVAL_ARGS)
	$(PY) -m rsgen_qgis.training.judge kid --data $(DATA) --model models/rsgen-base --fidelity --class-guidance-off \
	    --layouts 60 --superres 48 --out runs/judge/eval_rsgen-base.json --grids runs/judge/grids $(EVAL_ARGS)

# Four phases (MODEL_CARD.md): 80 min from scratch with a 32 px curriculum, then 100 min at 64 px from its EMA
# weights with a cosine learning-rate decay, then 115 min more from those (lower peak rate, another data order),
# then 70 min of guidance distillation (one UNet evaluation per step instead of two); then the int8 CPU graph,
# calibrated on the package's own sampling runs over training-split material (~1.5 min); then the class guide
# (a noise-aware scene classifier for class guidance): 3000 steps, then 3000 more at half the rate (~28 + 28 min).
train: install
	$(PY) -m rsgen_qgis.training.train --data $(DATA) --out runs/train --minutes 80 --threads 2
	$(PY) -m rsgen_qgis.training.train --data $(DATA) --out runs/train2 --init runs/train/last.pt --minutes 100 \
	    --threads 2 --low-res-share 0 --lr 2e-4 --lr-schedule cosine --lr-min 1e-5 --ema 0.999
	$(PY) -m rsgen_qgis.training.train --data $(DATA) --out runs/train3 --init runs/train2/last.pt --minutes 115 \
	    --threads 2 --low-res-share 0 --lr 1.5e-4 --lr-schedule cosine --lr-min 1e-5 --ema 0.999 --seed 1
	$(PY) -m rsgen_qgis.training.distill --data $(DATA) --teacher runs/train3/last.pt --out runs/distill --minutes 70 \
	    --threads 2 --low-res-share 0.2
	$(PY) -m rsgen_qgis.training.export --checkpoint runs/distill/last.pt --out models/rsgen-base \
	    --info rsgen_qgis/training/rsgen_base_info.json
	$(PY) -m rsgen_qgis.training.quantize --model models/rsgen-base --data $(DATA)
	$(PY) -m rsgen_qgis.training.classguide --data $(DATA) --out runs/classguide --steps 3000
	$(PY) -m rsgen_qgis.training.classguide --data $(DATA) --out runs/classguide2 --steps 3000 --lr 1e-3 --seed 8 \
	    --init runs/classguide/classguide.pt --add-to models/rsgen-base --scale 20

# rsgen-base 1.0 (latent, issue "rsgen-base 1.0"): the prepared images encoded once by models/taef2 (the run
# time's own ONNX encoder), then training in instalments that add up: each run resumes runs/train-latent/last.pt
# when it is there, else starts from the committed package's graph when LATENT_INIT names one (--init-onnx).
LATENT_MINUTES ?= 140
LATENT_INIT ?=
# The v loss's per-timestep weight (train.py --loss-weight): snr-plus-one from 1.0.0a3 on (steps 8 625 onward;
# min-snr before), so that the high-noise steps that place roads and houses on the layout keep their weight.
LATENT_LOSS ?= snr-plus-one
# The share of batches drawn from AID scenes (class prompts, no layout) against maps tiles with their layouts:
# 0.45 from 1.0.0a4 on (0.65 before), once 1.0.0a3 was seen to ignore the Swellendam layout. LATENT_ARGS: more
# train.py options for one instalment (1.0.0a4: --low-res-share 0 --lr 1.5e-4 --lr-min 2e-5 --threads 1).
LATENT_AID_SHARE ?= 0.45
LATENT_ARGS ?=
# The UNet's block widths for a run from scratch (a run from LATENT_INIT takes its package's widths, train.py).
# 96,96,144 is rsgen-base-1's since 1.0.0a8 (48,96,144 until 1.0.0a7): a wider full-resolution level, where the 32
# latent channels and 71 condition channels enter, learned faster per CPU minute in an equal-time comparison
# (MODEL_CARD.md, "Why it plateaus"). 1.0.0a8: LATENT_MINUTES=100 LATENT_EXTRA=runs/latents/maps256.npz; 1.0.0a9 on from it:
# LATENT_INIT=models/rsgen-base-1/denoiser.onnx LATENT_MINUTES=90 LATENT_ARGS="--low-res-share 0 --lr 2e-4 --lr-min 1e-5"; 1.0.0a10 the same
# for 80 (no change); 1.0.0a11 on from 1.0.0a10: LATENT_MINUTES=65 LATENT_ARGS="--low-res-share 0 --lr 1e-4 --lr-min 5e-6
# --ema 0.9995" (KID moved again, by about 3; the manifest's training.command has every phase). 1.0.0a12 (not shipped):
# LATENT_MINUTES=85 LATENT_ARGS="--out runs/a12 --low-res-share 0 --lr 1e-4 --lr-min 3e-6 --ema 0.9995" in bf16, 20 228
# steps: held-out x0 error a little lower, KID 7 points worse. That plateau was the latent turns (1.0.0a15, trained on
# crops as encoded: KID 127.8 -> 116.3). 1.0.0a16 on from it on all AID train scenes (make latents AID_LIMIT=0
# MAPS_LIMIT=256): LATENT_MINUTES=90 LATENT_AID_SHARE=0.55 LATENT_ARGS="--out runs/a16 --low-res-share 0 --lr 1.5e-4
# --lr-min 5e-6 --ema 0.9995" (MODEL_CARD.md); 1.0.0a17 the same for 88 more minutes from 1.0.0a16 (--out runs/a17;
# KID 113.3 -> 103.9); 1.0.0a18 the same for 85 more from 1.0.0a17 (--out runs/a18; KID 102.0, a draw on the judge).
LATENT_CHANNELS ?= 96,96,144
# bf16: the forward pass under torch.autocast in bfloat16 (train.py --precision); weights, optimizer and EMA stay
# float32. A step of the 96,96,144 UNet took 0.41 of the float32 time on this machine's AMX Xeon (1.0.0a12 on).
# 1.0.0a8-a11 (the commands above and in the manifest's training.command) ran in float32: LATENT_PRECISION=fp32.
# auto (from 2026-12-08): bf16 only where the CPU has it natively (AVX512-BF16 or AMX), else fp32. On a 2-core AMD
# EPYC without it, a bf16 forward of that UNet took 38-47 s (ATen's reference convolutions), a whole fp32 step 2.4 s.
LATENT_PRECISION ?= auto
# ResNet layers beyond the one per level, per level (train.py --extra-layers; model.grow_state): from a package
# with fewer, the new layers start as identities, so the grown UNet starts as the package and trains on with more
# capacity. A run from a grown package takes its layers from the manifest. Empty: the package's (or none).
# 1.0.0a13 (not shipped): LATENT_INIT=models/rsgen-base-1/denoiser.onnx LATENT_EXTRA_LAYERS=1,0,0 LATENT_MINUTES=90
# LATENT_ARGS="--out runs/a13 --low-res-share 0 --lr 1.5e-4 --lr-min 5e-6 --ema 0.9995" (MODEL_CARD.md).
LATENT_EXTRA_LAYERS ?=
LATENT_GPU_CHANNELS ?= 96,96,144
LATENT_GPU_PRECISION ?= bf16
# More train.py options for train-gpu (e.g. "--adv-weight 0.5 --adv-t-max 600": adversarial fine-tuning from
# LATENT_INIT, training/adversarial.py); train-latent takes them in LATENT_ARGS.
LATENT_GPU_ARGS ?=
# Encoding runs as LATENT_SHARDS one-thread processes side by side (ONNX Runtime keeps one core busy on 144 px
# scenes); AID_LIMIT / MAPS_LIMIT take evenly spread selections (0: all). The shards are joined when training.
LATENT_SHARDS ?= 2
# Augmentation that stays on the autoencoder's manifold: each image also flipped / turned and encoded, this many of
# the 8 dihedral copies (latent_data.DIHEDRAL; 1: as is). The batch maker no longer turns latents (MODEL_CARD.md).
LATENT_COPIES ?= 1
AID_LIMIT ?= 0
MAPS_LIMIT ?= 0
LATENT_PACK ?= $(shell seq -s, -f 'runs/latents/train.s%g.npz' 0 $$(($(LATENT_SHARDS) - 1)))
latents: install
	pids=; for k in $$(seq 0 $$(($(LATENT_SHARDS) - 1))); do \
	  $(PY) -m rsgen_qgis.training.latent_data encode --data $(DATA) $(if $(DATA512),--maps-data $(DATA512)) \
	    --ae models/taef2 --out runs/latents/train.s$$k.npz --threads 1 --aid-limit $(AID_LIMIT) \
	    --maps-limit $(MAPS_LIMIT) --shard $$k/$(LATENT_SHARDS) --copies $(LATENT_COPIES) & pids="$$pids $$!"; \
	done; for p in $$pids; do wait $$p || exit 1; done
# A second group at another GSD: the 256 px maps tiles of DATA (2.34 m, 32 x 32 latents) as a maps-only pack, so
# that the GSDs between the 512 px maps (1.17 m) and AID (4 m) are trained, not only interpolated. Training takes it
# beside LATENT_PACK when LATENT_EXTRA names it (a batch draws from either group with equal chance).
LATENT_EXTRA ?=
latents-maps256: install
	$(PY) -m rsgen_qgis.training.latent_data encode --data $(DATA) --ae models/taef2 --out runs/latents/maps256.npz \
	    --threads 1 --aid-limit -1 --maps-limit $(MAPS_LIMIT) --copies $(LATENT_COPIES)
train-latent: install
	$(PY) -m rsgen_qgis.training.train --latents $(LATENT_PACK) $(if $(LATENT_EXTRA),--latents $(LATENT_EXTRA)) \
	    --out runs/train-latent --tile 32 \
	    --channels $(LATENT_CHANNELS) --attention 0,0,1 --minutes $(LATENT_MINUTES) --threads 2 --resume --batch 16 \
	    --low-res-share 0.3 --lr-schedule cosine --loss-weight $(LATENT_LOSS) --aid-share $(LATENT_AID_SHARE) \
	    --precision $(LATENT_PRECISION) $(if $(LATENT_INIT),--init-onnx $(LATENT_INIT)) \
	    $(if $(LATENT_EXTRA_LAYERS),--extra-layers $(LATENT_EXTRA_LAYERS)) $(LATENT_ARGS)
# Guidance distillation (training/distill.py, from 1.0.0a5 on): a student that takes the guidance scale as an input
# and gives in one evaluation a step what the teacher gives in two. The teacher is LATENT_INIT's package (default
# the committed models/rsgen-base-1); export it with LATENT_CKPT=runs/distill-latent/last.pt. A later instalment
# trains on from the distilled graph (train.py reads --guidance-input from its manifest), then distils again.
DISTILL_MINUTES ?= 95
DISTILL_ARGS ?=
distill-latent: install
	$(PY) -m rsgen_qgis.training.distill --latents $(LATENT_PACK) $(if $(LATENT_EXTRA),--latents $(LATENT_EXTRA)) \
	    --teacher $(or $(LATENT_INIT),models/rsgen-base-1) --out runs/distill-latent --minutes $(DISTILL_MINUTES) \
	    --batch 16 --low-res-share 0 --loss-weight $(LATENT_LOSS) --aid-share $(LATENT_AID_SHARE) $(DISTILL_ARGS)
# Progressive distillation (training/progressive.py): a student that takes in one DDIM step what the teacher
# (LATENT_INIT's package, default the committed models/rsgen-base-1) takes in two; the exported package's default is
# DDIM at half of PROGRESSIVE_STEPS (0, the default: the teacher package's own default steps, so the committed
# student is distilled again from its grid, 10 -> 5). Export with LATENT_CKPT=$(PROGRESSIVE_OUT)/last.pt.
PROGRESSIVE_MINUTES ?= 95
PROGRESSIVE_STEPS ?= 0
PROGRESSIVE_OUT ?= runs/progressive-latent
PROGRESSIVE_ARGS ?=
progressive-latent: install
	$(PY) -m rsgen_qgis.training.progressive --latents $(LATENT_PACK) $(if $(LATENT_EXTRA),--latents $(LATENT_EXTRA)) \
	    --teacher $(or $(LATENT_INIT),models/rsgen-base-1) --teacher-steps $(PROGRESSIVE_STEPS) \
	    --out $(PROGRESSIVE_OUT) --minutes $(PROGRESSIVE_MINUTES) --batch 16 --loss-weight $(LATENT_LOSS) \
	    --aid-share $(LATENT_AID_SHARE) --resume $(PROGRESSIVE_ARGS)
# The instalment's EMA weights into models/rsgen-base-1 (fp32 + fp16 graphs), the text encoder taken from
# models/rsgen-base (named and pinned by sha256, not copied), on the autoencoder models/taef2. An export writes
# neither the weak model nor the prompt bank: then `make quantize-latent`, `make weak-latent WEAK=<an earlier
# instalment's int8 graph>` (it drops the fp16 graph again) and `make prompt-bank-latent` (MODEL_CARD.md, 1.0.0a19-a20).
LATENT_CKPT ?= runs/train-latent/last.pt
export-latent: install
	$(PY) -m rsgen_qgis.training.export --checkpoint $(LATENT_CKPT) --out models/rsgen-base-1 \
	    --autoencoder models/taef2 --text-from models/rsgen-base --info rsgen_qgis/training/rsgen_base_1_info.json
# Int8 CPU graphs (training/quantize.py; the run time uses them on the CPU at precision auto): rsgen-base-1's
# denoiser calibrated through the run-time engine on training material, after each export (an export drops the
# graphs it does not write); TAEF2's decoder, once, on the raw latents of a training pack.
quantize-latent: install
	$(PY) -m rsgen_qgis.training.quantize --model models/rsgen-base-1 --data $(DATA)
# Autoguidance (core/engine/autoguide.py): an earlier instalment's int8 graph as the package's weak model, default
# scale WEAK_SCALE; its fp16 graph is dropped to keep the package within 60 MB (a GPU runs the fp32 graph).
WEAK ?=
WEAK_SCALE ?= 2
WEAK_SOURCE ?=
weak-latent: install
	$(PY) -m rsgen_qgis.training.weak_model attach --package models/rsgen-base-1 --weak $(WEAK) \
	    --scale $(WEAK_SCALE) --source "$(WEAK_SOURCE)" --drop-fp16
# The prompt bank (core/engine/prompt_bank.py): the training phrases listed in the manifest, so that a free-form
# prompt is read as a mixture of them
prompt-bank-latent: install
	$(PY) -m rsgen_qgis.training.prompt_bank attach --package models/rsgen-base-1
quantize-ae: install
	$(PY) -m rsgen_qgis.training.quantize --autoencoder models/taef2 --latents runs/latents/train.s0.npz
# One device call (docs/GPU.md): the same training on the GPU for at most 8 minutes from the latent pack carried
# with the working tree, EMA weights to $$OUT (exported and evaluated on the CPU afterwards).
train-gpu:
	$(PY) -m rsgen_qgis.training.train --latents $(LATENT_PACK) $(if $(LATENT_EXTRA),--latents $(LATENT_EXTRA)) \
	    --out $${OUT:-runs}/train-gpu \
	    --tile 32 --channels $(LATENT_GPU_CHANNELS) --attention 0,0,1 --minutes $(or $(GPU_MINUTES),8) --batch 64 \
	    --low-res-share 0.3 --loss-weight $(LATENT_LOSS) --aid-share $(LATENT_AID_SHARE) --save-every 2 --ema-out $${OUT:-runs}/ema.pt --precision $(LATENT_GPU_PRECISION) $(if $(LATENT_INIT),--init-onnx $(LATENT_INIT)) \
	    $(if $(LATENT_EXTRA_LAYERS),--extra-layers $(LATENT_EXTRA_LAYERS)) $(LATENT_GPU_ARGS)

# A device call carries the working tree (64 MiB with what is carried): `make gpu-slim` moves every tracked
# model graph and image except LATENT_INIT's graph to .gpu-aside/ (ignored, so it stays here); `make gpu-unslim`
# puts them back (as does `git checkout -- models docs`).
gpu-slim:
	@git ls-files 'models/*.onnx' 'models/*.png' 'models/*.jpg' 'docs/img/*' | grep -vxF "$(LATENT_INIT)" | while read -r f; do \
	  mkdir -p ".gpu-aside/$$(dirname "$$f")" && mv "$$f" ".gpu-aside/$$f"; done
	@echo "working tree: $$(git ls-files | while read -r f; do [ -f "$$f" ] && stat -c %s "$$f"; done | \
	  awk '{s+=$$1} END {print s}') bytes tracked (a device call takes 67108864 with what is carried)"
gpu-unslim:
	@[ ! -d .gpu-aside ] || (cd .gpu-aside && find . -type f | while read -r f; do \
	  mkdir -p "../$$(dirname "$$f")" && mv "$$f" "../$$f"; done) && rm -rf .gpu-aside

# Compact training data (WebP images, layouts, caption embeddings) for a machine without the data folder, in parts
# of at most PACK_PART_MIB (a part travels to a device call beside the repository's ~43 MB): there,
# `python -m rsgen_qgis.training.train --pack runs/pack/train.npz ...` finds the parts (see the model card).
PACK_PART_MIB ?= 18
pack: install
	$(PY) -m rsgen_qgis.training.pack pack --data $(DATA) --out runs/pack/train.npz --max-part-mib $(PACK_PART_MIB)

# build/rsgen_qgis.zip (with the models, offline), build/repository/rsgen_qgis.zip (code only, for
# plugins.qgis.org's 25 MB limit) and build/models/<id>.zip (each model package, to add as a model folder)
package: install
	$(PY) tools/package.py --out build/rsgen_qgis.zip --model-zips build/models
	$(PY) tools/package.py --out build/repository/rsgen_qgis.zip --no-models

clean:
	rm -rf build out .pytest_cache
