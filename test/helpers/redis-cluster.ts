/**
 * A real local Redis Cluster (three masters, no replicas) and a real Sentinel, built from
 * redis-server processes on free loopback ports, for the tests of the Cluster and Sentinel paths.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

import { Redis } from 'ioredis';

import { until } from './fixtures.js';
import { freePort, waitForPort } from './redis-server.js';

const run = promisify(execFile);

/** Processes started by a helper, killed and removed by `stop()`. */
class Processes {
  protected readonly children: ChildProcess[] = [];
  readonly dir = mkdtempSync(join(tmpdir(), 'userops-redis-multi-'));

  protected async start(args: string[], port: number): Promise<ChildProcess> {
    const child = spawn('redis-server', args, { stdio: 'ignore', cwd: this.dir });
    this.children.push(child);
    await waitForPort(port, child);
    return child;
  }

  /** Kills every process and removes the folder. */
  async stop(): Promise<void> {
    await Promise.all(
      this.children.map(async (child) => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGKILL');
        await exited;
      }),
    );
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Three cluster-enabled redis-servers joined into one cluster that covers every slot. */
export class TestRedisCluster extends Processes {
  readonly ports: number[] = [];

  static async start(): Promise<TestRedisCluster> {
    const cluster = new TestRedisCluster();
    try {
      for (let i = 0; i < 3; i++) {
        const port = await freePort();
        cluster.ports.push(port);
        await cluster.start(
          ['--port', String(port), '--bind', '127.0.0.1', '--cluster-enabled', 'yes', '--cluster-config-file', `nodes-${port}.conf`,
            '--cluster-node-timeout', '2000', '--appendonly', 'no', '--save', '', '--dir', cluster.dir],
          port,
        );
      }
      await run('redis-cli', ['--cluster', 'create', ...cluster.ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '0', '--cluster-yes']);
      await until('the cluster to cover every slot', async () => {
        const states = await Promise.all(cluster.ports.map((p) => run('redis-cli', ['-p', String(p), 'cluster', 'info'])));
        return states.every(({ stdout }) => stdout.includes('cluster_state:ok'));
      });
      return cluster;
    } catch (err) {
      await cluster.stop();
      throw err;
    }
  }

  /** `redis+cluster://` with every node as a seed. */
  get url(): string {
    return `redis+cluster://${this.ports.map((p) => `127.0.0.1:${p}`).join(',')}`;
  }

  /** The port of the node that serves `key`. */
  async nodeFor(key: string): Promise<number> {
    const probe = new Redis(this.ports[0] as number, '127.0.0.1', { lazyConnect: true });
    try {
      const slot = await probe.cluster('KEYSLOT', key);
      const ranges = (await probe.cluster('SLOTS')) as unknown as [number, number, [string, number]][];
      const owner = ranges.find(([from, to]) => slot >= from && slot <= to);
      if (!owner) throw new Error(`no node serves slot ${slot}`);
      return owner[2][1];
    } finally {
      probe.disconnect();
    }
  }
}

/** A master, a replica and one Sentinel watching them as `mymaster`. */
export class TestRedisSentinel extends Processes {
  readonly name = 'mymaster';
  masterPort = 0;
  replicaPort = 0;
  sentinelPort = 0;
  private master?: ChildProcess;

  static async start(): Promise<TestRedisSentinel> {
    const s = new TestRedisSentinel();
    try {
      s.masterPort = await freePort();
      s.replicaPort = await freePort();
      s.sentinelPort = await freePort();
      const common = ['--bind', '127.0.0.1', '--appendonly', 'yes', '--appendfsync', 'always', '--save', ''];
      s.master = await s.start(['--port', String(s.masterPort), '--dir', s.dir, '--appendfilename', 'master.aof', '--appenddirname', 'master-aof', ...common], s.masterPort);
      await s.start(
        ['--port', String(s.replicaPort), '--dir', s.dir, '--appendfilename', 'replica.aof', '--appenddirname', 'replica-aof', '--replicaof', '127.0.0.1', String(s.masterPort), ...common],
        s.replicaPort,
      );
      // Sentinel rewrites its config file, so it gets one of its own.
      const conf = join(s.dir, 'sentinel.conf');
      writeFileSync(
        conf,
        [`port ${s.sentinelPort}`, 'bind 127.0.0.1', `sentinel monitor ${s.name} 127.0.0.1 ${s.masterPort} 1`,
          `sentinel down-after-milliseconds ${s.name} 1000`, `sentinel failover-timeout ${s.name} 5000`, ''].join('\n'),
      );
      await s.start([conf, '--sentinel'], s.sentinelPort);
      await until('the replica to sync', async () => {
        const { stdout } = await run('redis-cli', ['-p', String(s.replicaPort), 'info', 'replication']);
        return stdout.includes('master_link_status:up');
      });
      return s;
    } catch (err) {
      await s.stop();
      throw err;
    }
  }

  /** `redis+sentinel://` through the one Sentinel. */
  get url(): string {
    return `redis+sentinel://127.0.0.1:${this.sentinelPort}/${this.name}`;
  }

  /** Kills the master and waits until the Sentinel has promoted the replica. */
  async failover(): Promise<void> {
    const master = this.master;
    if (master && master.exitCode === null) {
      const exited = new Promise((r) => master.once('exit', r));
      master.kill('SIGKILL');
      await exited;
    }
    await until('the Sentinel to promote the replica', async () => {
      const { stdout } = await run('redis-cli', ['-p', String(this.sentinelPort), 'sentinel', 'get-master-addr-by-name', this.name]);
      return stdout.includes(String(this.replicaPort));
    }, 30_000);
  }
}
