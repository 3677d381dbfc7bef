# The graflow image: a static graflow binary on an empty base, run as a
# numeric non-root user. ENTRYPOINT is the binary, so the command is a
# graflow command: `docker run graflow/graflow:dev worker --pools default`.
#
# Build it with scripts/graflow-image.sh (make image), not with a bare
# `docker build .`: no registry is reachable here, so the build stage starts
# from graflow/go-builder (the host's Go toolchain, imported by the script),
# and the modules come from a vendor/ directory that the script adds to a
# temporary copy of the source. Only the classic builder's features are used
# (no BuildKit).

ARG GO_BUILDER=graflow/go-builder:1.26.8

FROM ${GO_BUILDER} AS build
LABEL io.graflow.image=graflow
ENV CGO_ENABLED=0 GOFLAGS="-mod=vendor -trimpath -buildvcs=false" GOPROXY=off GOTOOLCHAIN=local
WORKDIR /src
# The dependencies first, compiled in a layer that is reused until go.mod,
# go.sum or the set of imported packages changes (GRAFLOW_DEPS, from the
# script; std alone when it is not given).
COPY go.mod go.sum ./
COPY vendor/ vendor/
ARG GRAFLOW_DEPS=std
RUN go build $GRAFLOW_DEPS
COPY . .
RUN go build -ldflags="-s -w" -o /out/graflow ./cmd/graflow && go clean -cache

FROM scratch
LABEL io.graflow.image=graflow \
      org.opencontainers.image.source="https://github.com/graflow-go/graflow" \
      org.opencontainers.image.description="graflow: event-sourced workflows on Redis Streams"
# For rediss:// (TLS) to a server whose certificate a public CA signed.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/graflow /graflow
# 65532: "nonroot" in distroless images; no home, no shell, nothing to write.
USER 65532:65532
ENTRYPOINT ["/graflow"]
CMD ["--help"]
