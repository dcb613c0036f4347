# driftwatch, multi-stage: build the binary, fetch ONNX Runtime's shared
# library from its PyPI wheel (as scripts/setup.sh does), and ship both on a
# slim Debian with the pipelines, schemas and model.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# librdkafka (with zstd) and OpenSSL are built from source by rdkafka-sys
# and openssl-src (perl and make come with the image).
RUN apt-get update && apt-get install -y --no-install-recommends cmake python3 \
 && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY scripts/split-debuginfo.sh scripts/
# The image ships the binary without its line tables (a release binary of
# 749 MB was 137 MB stripped, measured for issue 25); they
# stay in this stage as driftwatch.debug (`docker build --target build`).
RUN cargo build --release --locked --bin driftwatch \
 && scripts/split-debuginfo.sh target/release/driftwatch

FROM python:3.11-slim-bookworm AS ort
RUN pip download --no-deps --only-binary=:all: onnxruntime==1.31.1 -d /wheels \
 && python -c "import glob, zipfile; z = zipfile.ZipFile(glob.glob('/wheels/onnxruntime-1.31.1-*.whl')[0]); open('/libonnxruntime.so.1.31.1', 'wb').write(z.read('onnxruntime/capi/libonnxruntime.so.1.31.1'))"

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl libstdc++6 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/driftwatch /usr/local/bin/driftwatch
COPY --from=ort /libonnxruntime.so.1.31.1 /opt/onnxruntime/libonnxruntime.so.1.31.1
ENV ORT_DYLIB_PATH=/opt/onnxruntime/libonnxruntime.so.1.31.1
WORKDIR /app
COPY pipelines pipelines
COPY schemas schemas
COPY models models
USER 65534:65534
EXPOSE 9464
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fs http://127.0.0.1:9464/health || exit 1
ENTRYPOINT ["driftwatch"]
CMD ["run", "pipelines/digits.yaml", "--metrics", "0.0.0.0:9464"]
