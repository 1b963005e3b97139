# syntax=docker/dockerfile:1
#
# The Sigil container image: the static release binary (make release,
# CGO_ENABLED=0) on distroless/static, running as the non-root user
# 65532. Build it with `make docker-image`, or for several platforms:
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     --build-arg VERSION=$(git describe --tags --always --dirty) -t sigil .
#
# The static binary has no pkcs11 key manager (it needs cgo); an image that
# must reach an HSM builds `make release-cgo` on a base with the HSM's
# PKCS#11 module and a libc instead (docs/release.md).
#
# Volumes: /var/lib/sigil holds the data directory (the working directory:
# the default data_dir ./.sigil/server or ./.sigil/agent lands in it),
# /run/sigil the unix sockets (the admin API, the Workload API).

ARG GO_VERSION=1.26.8

# The builder runs on the build host's platform and cross-compiles: the
# static build needs no C toolchain for the target.
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
ARG TARGETOS=linux
ARG TARGETARCH=amd64
ARG VERSION=""
ARG COMMIT=""
ARG BUILD_DATE=""
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    make release PLATFORMS=${TARGETOS}/${TARGETARCH} \
      ${VERSION:+VERSION=$VERSION} ${COMMIT:+COMMIT=$COMMIT} ${BUILD_DATE:+BUILD_DATE=$BUILD_DATE} && \
    cp dist/sigil-${TARGETOS}-${TARGETARCH} /sigil && \
    mkdir -p /rootfs/var/lib/sigil /rootfs/run/sigil && \
    chmod 0750 /rootfs/var/lib/sigil && chmod 0755 /rootfs/run/sigil

FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=""
LABEL org.opencontainers.image.title="sigil" \
      org.opencontainers.image.description="Sigil: SPIFFE workload identity issuer (static build, no pkcs11)" \
      org.opencontainers.image.source="https://github.com/sigil-id/sigil" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /sigil /usr/local/bin/sigil
COPY --from=build --chown=65532:65532 /rootfs/var/lib/sigil /var/lib/sigil
COPY --from=build --chown=65532:65532 /rootfs/run/sigil /run/sigil
USER 65532:65532
WORKDIR /var/lib/sigil
VOLUME ["/var/lib/sigil", "/run/sigil"]
ENTRYPOINT ["/usr/local/bin/sigil"]
CMD ["--help"]
