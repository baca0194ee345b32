# Build stage: compile TypeScript and the native addons, then drop dev dependencies.
FROM node:24-bookworm-slim AS build

# better-sqlite3 is a native addon: node-gyp compiles 12.x when no prebuilt binary fits. This Node
# loads 13.x (prebuilt, Node-API; src/consumer/sqlite-driver.ts), but npm installs both majors.
# Both are optional dependencies, so a failed build would not fail `npm ci`: the check after the
# build does, by loading the driver this Node uses.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci

COPY tsconfig*.json ./
COPY src ./src
RUN npm run build \
 && node -e "import('./dist/consumer/sqlite-driver.js')" \
 && npm prune --omit=dev

# Runtime stage: no compiler, only production node_modules and the compiled JavaScript.
# Same base image as the build stage, so the addon matches this Node's ABI and glibc.
FROM node:24-bookworm-slim

ENV NODE_ENV=production \
    USEROPS_DB=/data/userops.db

WORKDIR /app
# Owned by root: the node user can read the app but not change it.
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/package.json ./package.json

# Created and chowned before VOLUME, so a new named volume starts out owned by node.
RUN mkdir -p /data && chown node:node /data
VOLUME /data

USER node

# /healthz, /readyz, /metrics (and /dashboard when USEROPS_DASHBOARD=1); USEROPS_HTTP_PORT moves it.
EXPOSE 9464

# The consumer finishes the job in hand and exits on SIGTERM.
STOPSIGNAL SIGTERM
# Executed directly, so its shebang sets the V8 flags the daemon is measured with (src/cli/main.ts).
ENTRYPOINT ["/app/dist/cli/main.js"]
CMD ["consumer"]
