# ws-guard container image. Build: docker build -t ws-guard .   (not built in CI: no container engine there)
FROM node:22-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm ci && npm prune --omit=dev

FROM node:22-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
# Keeps glibc from handing freed read buffers back to the kernel after every GC. WebSocket traffic no longer
# needs it (its reads reuse one buffer, docs/performance.md finding 10); plain-HTTP bodies still read into a
# fresh buffer per read.
ENV MALLOC_TRIM_THRESHOLD_=268435456
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY bin ./bin
COPY config ./config
USER node
EXPOSE 8080 9901
# SIGTERM drains: every connection gets close 1001, the process exits 0 within timeouts.drain.
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "bin/ws-guard.js"]
CMD ["--config", "/etc/ws-guard/guard.yaml"]
