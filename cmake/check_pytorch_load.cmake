# cmake -DTRAIN=<train_parity> -DFROM_PYTORCH=<from_pytorch> -DSCRIPT=<load_in_pytorch.py>
#       -DDIR=<scratch dir> -P check_pytorch_load.cmake
# A model trained here loads into the official PyTorch package: a short mixed
# [mLSTM, sLSTM] parity run saves a training checkpoint; load_in_pytorch.py
# builds the official xLSTMLMModel from its config, loads the parameters with
# load_state_dict(strict=True) and writes torch's logits; from_pytorch runs
# the same tokens in C++ and must match them. Needs python3 with torch and
# dacite ($XLSTM_PYTHON, else the first python3 on the PATH or /usr/bin/python3
# that has them) and $XLSTM_REFS (the folder holding a clone of NX-AI/xlstm);
# without them the test prints "skipped:" (SKIP_REGULAR_EXPRESSION).
if(NOT DEFINED ENV{XLSTM_REFS} OR NOT EXISTS "$ENV{XLSTM_REFS}/xlstm/xlstm/__init__.py")
  message("skipped: set XLSTM_REFS to the folder holding a clone of NX-AI/xlstm")
  return()
endif()
set(python "")
foreach(candidate "$ENV{XLSTM_PYTHON}" python3 /usr/bin/python3)
  if(candidate AND NOT python)
    execute_process(COMMAND "${candidate}" -c "import torch, dacite" RESULT_VARIABLE missing
                    OUTPUT_QUIET ERROR_QUIET)
    if(missing EQUAL 0)
      set(python "${candidate}")
    endif()
  endif()
endforeach()
if(NOT python)
  message("skipped: no python3 here imports torch and dacite (set XLSTM_PYTHON)")
  return()
endif()
file(MAKE_DIRECTORY "${DIR}")
set(checkpoint "${DIR}/parity.safetensors")
set(check "${DIR}/check.safetensors")
execute_process(COMMAND "${TRAIN}" --slstm-at 1 --steps 20 --batch-size 16 --embedding-dim 32
                        --warmup-steps 2 --train-max-length 8 --eval-every 0 --eval-samples 0
                        --in-dist-samples 0 --threads 1 --print-every 20 --save "${checkpoint}"
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${TRAIN} failed (${rc})")
endif()
execute_process(COMMAND "${python}" "${SCRIPT}" "${checkpoint}" --tokens 1,0,0,1,0,1,1,0,0,2
                        --check "${check}" RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "load_in_pytorch.py failed (${rc})")
endif()
execute_process(COMMAND "${FROM_PYTORCH}" "${check}" --prefix param. RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "from_pytorch does not reproduce the official package's logits (${rc})")
endif()
