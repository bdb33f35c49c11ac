# One image for every Loom service; compose.yaml picks the services with --services.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
COPY tools/go.mod tools/go.sum tools/
RUN go mod download && go mod download -modfile=tools/go.mod
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/loom ./cmd/loom \
 && CGO_ENABLED=0 go build -modfile=tools/go.mod -trimpath -o /out/grpc-health-probe github.com/grpc-ecosystem/grpc-health-probe

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates espeak-ng ffmpeg \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /var/lib/loom --create-home loom
COPY --from=build /out/loom /out/grpc-health-probe /usr/local/bin/
USER loom
WORKDIR /var/lib/loom
ENV LOOM_LISTEN=:8080 LOOM_DATA_DIR=/var/lib/loom
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD ["grpc-health-probe", "-addr=127.0.0.1:8080"]
ENTRYPOINT ["loom"]
CMD ["serve"]
