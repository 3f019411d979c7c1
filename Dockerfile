# sluice-operator image:
#   docker build -t REGISTRY/sluice-operator:0.1.0 .
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sluice-operator

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="sluice-operator" \
      org.opencontainers.image.description="Kubernetes operator for FileTransferServer and TransferUser" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://example.invalid/sluice" \
      org.opencontainers.image.version="0.1.0"
COPY --from=build /src/target/release/sluice-operator /usr/local/bin/sluice-operator
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sluice-operator"]
CMD ["run"]
