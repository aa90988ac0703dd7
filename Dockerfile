# The csi-plugin image, for clusters that pull from a registry:
#   docker build --build-arg VERSION=$(git describe --tags --always --dirty) -t REGISTRY/modelcast/csi-plugin:TAG .
# The local e2e cluster (hack/e2e/cluster.sh) builds the same image without docker.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd/ cmd/
COPY internal/ internal/
COPY pkg/ pkg/
ARG VERSION=devel
RUN CGO_ENABLED=0 go build -ldflags "-X github.com/modelcast/modelcast/internal/version.version=$VERSION" -o /csi-plugin ./cmd/csi-plugin

# mount and umount: k8s.io/mount-utils runs them; ca-certificates: OSS over HTTPS.
FROM debian:bookworm-slim
RUN apt-get update \
	&& apt-get install -y --no-install-recommends ca-certificates mount \
	&& rm -rf /var/lib/apt/lists/*
COPY --from=build /csi-plugin /csi-plugin
ENTRYPOINT ["/csi-plugin"]
