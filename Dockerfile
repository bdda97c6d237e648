# dd3g on a CUDA GPU node: gsplat's CUDA rasterizer, ImageDream teacher, multi-GPU Accelerate.
#   docker build -t dd3g .
#   docker run --gpus all -v /data:/data -v /weights:/weights -e DD3G_DATA_ROOT=/data -e DD3G_PROFILE=full \
#       -e DD3G_SDXL_PATH=/weights/sdxl -e DD3G_REMBG_MODEL=/weights/u2net.onnx \
#       -e DD3G_TEACHER_PATH=/weights/imagedream-ipmv-diffusers dd3g \
#       dagster job execute -m pipelines.definitions -j distill
# Model weights are never downloaded at run time: mount them and point these variables at them (a missing
# or partial ImageDream folder fails the `teacher` asset first, naming what is missing). DD3G_PROFILE may also
# be a JSON profile file (dd3g_core/profiles.py) with your cluster's sizes.
FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DAGSTER_HOME=/opt/dagster_home \
    # gsplat JIT-compiles its CUDA extension on first use; build it for common datacentre GPUs
    TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0"

RUN apt-get update && apt-get install -y --no-install-recommends \
        software-properties-common git ninja-build ffmpeg libgl1 libglib2.0-0 \
    && add-apt-repository -y ppa:deadsnakes/ppa && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev \
    && rm -rf /var/lib/apt/lists/*

RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /opt/dd3g
# pip pinned, then torch first and pinned (the PyPI Linux wheel of 2.13.0 is the CUDA build)
RUN pip install "pip==26.3" && pip install "torch==2.13.0"
COPY pyproject.toml README.md ./
COPY dd3g_core ./dd3g_core
COPY pipelines ./pipelines
COPY assets ./assets
COPY workspace.yaml ./
RUN pip install -e ".[pipeline,train]" "rembg[gpu]>=2.0.50" && mkdir -p "$DAGSTER_HOME"

# Compile gsplat's CUDA kernels at build time when the builder has a GPU toolchain
# (no GPU is needed to compile). Failure here only means it compiles on first use instead.
RUN python -c "import gsplat.cuda._backend as b; print('gsplat CUDA extension:', b._C is not None)" || true

# The UI binds 127.0.0.1 unless told otherwise: pass -e DD3G_UI_HOST=0.0.0.0 (and -p 3000:3000)
# to reach it from outside the container, on a network you trust.
ENV DD3G_UI_HOST=127.0.0.1
EXPOSE 3000
CMD ["sh", "-c", "exec dagster dev -w workspace.yaml -h \"$DD3G_UI_HOST\" -p 3000"]
