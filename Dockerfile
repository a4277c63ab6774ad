# A static `kai` in an image FROM scratch: nothing in it but the binary and the
# CA bundle it needs to reach S3 over HTTPS.
#
#   docker build -t kai .
#   docker run -p 5000:5000 -v kai-data:/data kai
#
# The build stage needs the Rust image and the musl target; the result has no
# shell, no package manager and nothing to log in to.
FROM rust:1-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl \
 && apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin kai \
 && mkdir -p /staging/data \
 && cp target/x86_64-unknown-linux-musl/release/kai /staging/kai

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /staging/kai /kai
COPY --from=build /staging/data /data
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
EXPOSE 5000
VOLUME ["/data"]
ENTRYPOINT ["/kai"]
CMD ["serve", "--listen", "0.0.0.0:5000", "--data", "/data"]
