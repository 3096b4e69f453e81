# Every target sets up what it needs; a fresh machine needs only python3 (>= 3.10) and make.
PYTHON ?= python3
VENV ?= .venv
TFLITE_VENV ?= .venv-tflite
BIN := $(VENV)/bin
SHARED ?= ../shared
# The suites that run again in the numpy<2 venv on the tflite-runtime backend (the kernels too:
# their exactness must not depend on the numpy version).
CONFORMANCE := tests/test_backend_conformance.py tests/test_model_safety.py tests/test_demo_models.py \
	tests/test_frames.py tests/test_kernels.py

.PHONY: run compile test test-main test-tflite mosquitto bench soak hil clean

$(VENV)/.installed: pyproject.toml setup.py runtime/kernels/native.c runtime/kernels/native.h
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

# Byte-code for the project's own modules, as `pip install .` makes on a device: an editable
# install has none, and with PYTHONDONTWRITEBYTECODE (set on these machines) every start would
# compile them again (~60 ms of the agent's start-up, measured).
compile: $(VENV)/.installed
	@$(BIN)/python -m compileall -q runtime sync tools models firmware_bridge >/dev/null

# tflite-runtime 2.14 needs numpy < 2, so it gets a venv of its own.
$(TFLITE_VENV)/.installed: pyproject.toml setup.py runtime/kernels/native.c runtime/kernels/native.h
	$(PYTHON) -m venv $(TFLITE_VENV)
	$(TFLITE_VENV)/bin/pip install -q --disable-pip-version-check -e '.[tflite,test]'
	touch $@

# The device agent on its embedded demo for 20 s (`edgeloop run` alone runs until Ctrl-C).
run: compile
	$(BIN)/edgeloop run --duration 20 --status-every 2 --data-dir .edgeloop-demo

test: test-main test-tflite

# The sync tests start their own Mosquitto and PostgreSQL (Debian's packages; the services are not
# started, the tests make their own) on loopback, and inject crashes with strace; the metrics are
# checked by Debian's promtool (package prometheus).
mosquitto:
	@command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto)
	@command -v strace >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace)
	@command -v openssl >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl)
	@command -v promtool >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus)
	@command -v systemd-analyze >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql)
	@command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nats-server)

test-main: $(VENV)/.installed mosquitto
	EDGELOOP_TEST_BACKENDS=litert $(BIN)/python -m pytest

test-tflite: $(TFLITE_VENV)/.installed
	EDGELOOP_TEST_BACKENDS=tflite_runtime $(TFLITE_VENV)/bin/python -m pytest $(CONFORMANCE)

# Figures for the README's performance table (JSON on stdout).
bench: compile $(TFLITE_VENV)/.installed
	$(BIN)/edgeloop bench $(SHARED)/models/coral/mobilenet_v2_1.0_224_quant.tflite --threads 2 --seconds 5 \
		--cold-start $(SHARED)/images/cat.bmp --frame 640x480 --json
	$(BIN)/edgeloop bench kernels --invoke-model $(SHARED)/models/coral/mobilenet_v2_1.0_224_quant.tflite \
		--threads 2 --json
	$(TFLITE_VENV)/bin/edgeloop bench $(SHARED)/models/coral/mobilenet_v2_1.0_224_quant.tflite --threads 2 \
		--seconds 5 --compare-backends --json
	$(BIN)/edgeloop bench agent --shared $(SHARED) --json

# Long runs of the same fault tests: more kills, more corruption trials, more fuzzing.
soak: $(VENV)/.installed mosquitto
	EDGELOOP_SOAK_KILLS=100 EDGELOOP_SALVAGE_FILES=500 EDGELOOP_FUZZ_EXAMPLES=3000 EDGELOOP_LINK_CUT_S=60 EDGELOOP_SOAK_CRASH_STEP=1 \
		EDGELOOP_INDEX_KILLS=100 EDGELOOP_SERIAL_FRAMES=1000000 EDGELOOP_NATS_KILLS=3 \
		EDGELOOP_TEST_BACKENDS=litert $(BIN)/python -m pytest tests/test_outbox_kills.py tests/test_kernels_fuzz.py \
		tests/test_outbox.py tests/test_sync_broker.py tests/test_link_cut.py tests/test_crash_points.py \
		tests/test_kill_storm_broker.py tests/test_index_kills.py tests/test_framing.py tests/test_end_to_end.py \
		tests/test_salvage.py tests/test_broker_cluster.py

# Hardware-in-the-loop: runs on a rig, skips (with the reason) what the device lacks.
hil: $(VENV)/.installed
	$(BIN)/python -m pytest -rs hil

clean:
	rm -rf $(VENV) $(TFLITE_VENV) .pytest_cache
