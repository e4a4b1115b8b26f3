# GoChat's images, from one build stage:
#   docker build -t gochat .                                   the services: gochat gateway | logic | repo | task | migrate
#   docker build --target operator -t gochat-operator .        the operator
FROM golang:1.26 AS build
WORKDIR /src
COPY go.work go.work.sum ./
COPY api/go.mod api/go.sum api/
COPY services/go.mod services/go.sum services/
COPY operator/go.mod operator/go.sum operator/
RUN cd services && go mod download && cd ../operator && go mod download
COPY api/ api/
COPY services/ services/
COPY operator/ operator/
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/gochat ./services/cmd/gochat && \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/operator ./operator/cmd

FROM gcr.io/distroless/static-debian12:nonroot AS operator
COPY --from=build /out/operator /manager
USER 65532:65532
ENTRYPOINT ["/manager"]

FROM gcr.io/distroless/static-debian12:nonroot AS gochat
COPY --from=build /out/gochat /usr/local/bin/gochat
USER 65532:65532
EXPOSE 8080 9000 9001 9002
ENTRYPOINT ["/usr/local/bin/gochat"]
