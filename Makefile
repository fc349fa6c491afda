# kltrace_ros: the two commands a user needs are `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kltrace-setup

.PHONY: setup test demo suite clean

setup: $(STAMP)

# Re-run only when what it installs changes (idempotent, seconds when done).
# editable_mode=compat: a plain path entry, so our package and the generated msg/
# directory (a namespace portion in site-packages) import as one package.
$(STAMP): requirements.txt setup.py CMakeLists.txt package.xml msg/*.msg tools/build_msgs.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	tools/build_msgs.sh $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
	$(PY) -c "import rclpy, torch, kltrace_ros.msg; print('setup ok: torch', torch.__version__)"
	@touch $(STAMP)

test: setup
	$(VENV)/bin/python -m pytest -q test

demo: setup
	$(VENV)/bin/kltrace demo

# the large-motion evaluation suite (freely licensed photos, exact ground truth): out/large_motion
suite: setup
	$(VENV)/bin/kltrace make-suite out/large_motion

clean:
	rm -rf $(VENV) build
