# levy's image: one static binary, CA certificates (for Stripe and TLS to
# Redis), a non-root user and a writable data directory. Nothing else: no
# shell, no package manager.
#
#   make image            the image from a binary built on this machine
#                         (target prebuilt; needs no registry)
#   docker build .        the image from source, built in a Go container
#
# Both final stages hold the same files; the image's entrypoint is levy,
# its default command serves /etc/levy/levy.yaml (mount a ConfigMap there).

# prebuilt: the root filesystem `make image` assembled under bin/image.
FROM scratch AS prebuilt
COPY bin/image/rootfs/ /
COPY --chown=65532:65532 bin/image/data/ /var/lib/levy/
USER 65532:65532
WORKDIR /var/lib/levy
EXPOSE 8080 8081 8082
ENTRYPOINT ["/levy"]
CMD ["serve", "--config", "/etc/levy/levy.yaml", "--data-dir", "/var/lib/levy"]

# build: the same root filesystem, from source.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=
ARG DATE=
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT} -X main.date=${DATE}" \
      -o /out/rootfs/levy ./cmd/levy \
 && mkdir -p /out/rootfs/etc/ssl/certs /out/data \
 && cp /etc/ssl/certs/ca-certificates.crt /out/rootfs/etc/ssl/certs/ \
 && echo 'nonroot:x:65532:65532:nonroot:/var/lib/levy:/sbin/nologin' >/out/rootfs/etc/passwd \
 && echo 'nonroot:x:65532:' >/out/rootfs/etc/group

FROM scratch
COPY --from=build /out/rootfs/ /
COPY --from=build --chown=65532:65532 /out/data/ /var/lib/levy/
USER 65532:65532
WORKDIR /var/lib/levy
EXPOSE 8080 8081 8082
ENTRYPOINT ["/levy"]
CMD ["serve", "--config", "/etc/levy/levy.yaml", "--data-dir", "/var/lib/levy"]
