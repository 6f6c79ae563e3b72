#!/bin/sh
# SageMaker starts training as `IMAGE train` and hosting as `IMAGE serve`; processing jobs set
# their own entry point (python3 CODE.py) and never come here.
set -e
case "$1" in
  train) shift; exec train "$@" ;;                       # sagemaker-training's script-mode runner
  serve) shift; exec python /opt/program/serve.py "$@" ;; # gunicorn on :8080, /ping and /invocations
  *) exec "$@" ;;
esac
