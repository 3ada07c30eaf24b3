#!/bin/sh
# Issue 22: PAINVRL_REQUIRE_GPU=1 turns the skip of a gpu test into a failure that names the CUDA
# runtime's error, so that a device check on a machine whose CUDA cannot start never passes as
# skipped. Without a usable device (this machine): the gpu tests skip, and fail when required;
# with one: they pass either way.   gpu_required_check.sh PATH/painvrl_gpu_tests
bin=$1
plain=$("$bin" --gtest_filter='GpuMath.*' 2>&1)
required=$(PAINVRL_REQUIRE_GPU=1 "$bin" --gtest_filter='GpuMath.*' 2>&1)
status=$?
if echo "$plain" | grep -q '\[  SKIPPED \]'; then
  if [ "$status" -eq 0 ]; then
    echo "FAIL: no usable device and PAINVRL_REQUIRE_GPU=1, yet the gpu tests passed"
    echo "$required"
    exit 1
  fi
  if ! echo "$required" | grep -q 'PAINVRL_REQUIRE_GPU: no usable CUDA device (cuda'; then
    echo "FAIL: the failure does not name the CUDA error:"
    echo "$required"
    exit 1
  fi
  echo "ok: without a device the required gpu tests fail naming it:"
  echo "$required" | grep 'PAINVRL_REQUIRE_GPU' | head -1
else
  [ "$status" -eq 0 ] || { echo "FAIL: with a device the gpu tests failed"; echo "$required"; exit 1; }
  echo "ok: a usable device; the gpu tests pass"
fi
