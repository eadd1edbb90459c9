# The converter as an image. Build offline after `make build` (`make image`
# does both):
#   docker build -t mkbootfs . && docker run --rm mkbootfs version
# bin/mkbootfs is static (CGO_ENABLED=0), so it needs nothing else.
FROM scratch
COPY bin/mkbootfs /mkbootfs
# scratch has no /tmp, where convert spools image layers: WORKDIR makes it.
WORKDIR /tmp
WORKDIR /
ENTRYPOINT ["/mkbootfs"]
