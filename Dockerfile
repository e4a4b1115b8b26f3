# The GoChat image: one static binary, four entrypoints (gochat gateway |
# logic | repo | task), plus migrate. docker build -t gochat .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.work go.work.sum ./
COPY api/go.mod api/go.sum api/
COPY services/go.mod services/go.sum services/
COPY operator/go.mod operator/go.sum operator/
RUN cd services && go mod download
COPY api/ api/
COPY services/ services/
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/gochat ./services/cmd/gochat

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/gochat /usr/local/bin/gochat
USER 65532:65532
EXPOSE 8080 9000 9001 9002
ENTRYPOINT ["/usr/local/bin/gochat"]
