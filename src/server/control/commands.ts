// What the control socket can do: one entry per command, each checking
// its arguments and answering with a small MessagePack-able result or
// throwing a ControlError. Exports are named by `export`; without it the
// server's only export, or the default one (''), is meant. Filters are
// found by walking an export's chain (device `next` links) for the kind
// named; what a filter can do live is whatever methods it has (error,
// delay, rate: configure; power-cut: cut; journal: mark; dirty: the
// bitmaps), so adding a filter kind adds no case here unless it brings a
// new command. Opening images and parsing --filter text belong to the
// command line, so the context brings them in.

import type { IoEngine } from '../../io/engine.js';
import { LiveImage } from '../../device/images/live.js';
import { createSnapshot, forkSnapshot, listSnapshots, revertSnapshot } from '../../device/images/snapshots.js';
import type { BlockDevice } from '../../device/types.js';
import { ControlError } from '../../protocol/control/codec.js';
import type { ExportRegistry, ServedExport } from '../exports.js';
import { Arguments } from './arguments.js';

export interface ControlContext {
  registry: ExportRegistry;
  engine: IoEngine;
  /** Opens an image (and its filters, given as --filter text) and adds it as export `name`. */
  addExport(spec: { name: string; file: string; readOnly: boolean; filters: string[] }): Promise<void>;
  /** A --filter text, parsed: its kind and the config that kind's configure() takes. */
  parseFilter(text: string): { name: string; config: unknown };
  /** The --filter text each filter was made from, for listing. */
  filterText(filter: BlockDevice): string | undefined;
  /** Starts the server's shutdown; the response goes out first. */
  shutdown(): void;
}

/** A filter in an export's chain, as the control socket sees it. */
interface Filter extends BlockDevice {
  filterName: string;
  configure?(config: unknown): void;
  stats?(): unknown;
  cut?(options: { policy?: string; seed?: number }): Promise<unknown>;
  mark?(name: string): Promise<unknown>;
  start?(name: string, options: { granularity?: number }): unknown;
  clear?(name: string): unknown;
  drop?(name: string): unknown;
  list?(): unknown;
}

/** Runs `fn` once the response has been written (or the client has gone). */
export type AfterResponse = (fn: () => void) => void;

interface Command {
  summary: string;
  run(args: Arguments, ctx: ControlContext, after: AfterResponse): Promise<unknown>;
}

/** Settings given live (filter-set, filter-clear), which replace the --filter text a filter was made with. */
const liveSettings = new WeakMap<BlockDevice, string>();

function chain(e: ServedExport): BlockDevice[] {
  const devices: BlockDevice[] = [];
  for (let d: BlockDevice | undefined = e.gateway.device; d; d = d.next) devices.push(d);
  return devices;
}

/** The switchable image under an export's filters (a file image of a server with --control). */
function liveImageOf(e: ServedExport): LiveImage | undefined {
  return chain(e).find((d): d is LiveImage => d instanceof LiveImage);
}

function filters(e: ServedExport): Filter[] {
  return chain(e).filter((d): d is Filter => typeof (d as Partial<Filter>).filterName === 'string');
}

function target(ctx: ControlContext, args: Arguments): ServedExport {
  const name = args.optionalString('export');
  const all = ctx.registry.list();
  if (name === undefined) {
    const only = all.length === 1 ? all[0] : ctx.registry.find('');
    if (!only) throw new ControlError('bad-argument', `name the export (export: ${all.map((e) => `'${e.name}'`).join(', ')})`);
    return only;
  }
  const e = ctx.registry.find(name);
  if (!e) throw new ControlError('not-found', `no export '${name}' (exports: ${all.map((x) => `'${x.name}'`).join(', ') || 'none'})`);
  return e;
}

/** The one filter of `kind` on the export (or the index-th in its chain) that has `method`. */
function filterOf(e: ServedExport, kind: string, args: Arguments, method?: keyof Filter): Filter {
  const index = args.optionalInteger('index', 0, 1000);
  const all = filters(e);
  const found = all.filter((f, i) => f.filterName === kind && (index === undefined || i === index));
  const label = `export '${e.name}'`;
  if (found.length === 0) {
    const hint = index === undefined ? `start vblk serve with --filter ${kind}` : `its filters: ${all.map((f, i) => `${i} ${f.filterName}`).join(', ') || 'none'}`;
    throw new ControlError('not-found', `${label} has no ${kind} filter${index === undefined ? '' : ` at index ${index}`} (${hint})`);
  }
  if (found.length > 1) throw new ControlError('bad-argument', `${label} has ${found.length} ${kind} filters: give index (${all.map((f, i) => `${i} ${f.filterName}`).join(', ')})`);
  const filter = found[0];
  if (method && typeof filter[method] !== 'function') throw new ControlError('bad-argument', `a ${kind} filter cannot do that`);
  return filter;
}

async function attempt<T>(what: string, run: () => T | Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (err) {
    if (err instanceof ControlError) throw err;
    throw new ControlError('failed', `${what}: ${(err as Error).message}`);
  }
}

function describeExport(e: ServedExport, ctx: ControlContext): Record<string, unknown> {
  const live = liveImageOf(e);
  return {
    name: e.name,
    description: e.description,
    size: e.size,
    readOnly: e.capabilities.readOnly,
    file: live?.file ?? null,
    image: chain(e).at(-1)!.description,
    filters: filters(e).map((f, index) => ({ index, name: f.filterName, settings: liveSettings.get(f) ?? ctx.filterText(f) ?? f.filterName })),
  };
}

/**
 * Runs `change` on the file under a live export with every export of that
 * image paused and flushed through its filters, so the file as it is
 * changed holds every write acknowledged so far and none that is not.
 * The exports resume only once the response is out, so no request held
 * meanwhile (which goes to the changed image) is acknowledged before it.
 */
async function switchImage<T>(ctx: ControlContext, e: ServedExport, what: string, after: AfterResponse, change: (file: string) => Promise<T>): Promise<T> {
  const live = liveImageOf(e);
  if (!live) throw new ControlError('bad-argument', `export '${e.name}' has no image file to ${what} (a memory image?)`);
  const sharing = ctx.registry.list().filter((x) => chain(x).includes(live));
  after(() => sharing.forEach((x) => x.gateway.resume()));
  await Promise.all(sharing.map((x) => x.gateway.pause()));
  return attempt(what, async () => {
    for (const x of sharing) if (!x.capabilities.readOnly) await x.gateway.device.flush();
    return live.change(change);
  });
}

export const COMMANDS: Record<string, Command> = {
  help: {
    summary: 'the commands and what they do',
    run: async (args) => {
      args.only();
      return Object.fromEntries(Object.entries(COMMANDS).map(([name, c]) => [name, c.summary]));
    },
  },
  exports: {
    summary: 'every export: name, size, file, filters',
    run: async (args, ctx) => {
      args.only();
      return ctx.registry.list().map((e) => describeExport(e, ctx));
    },
  },
  stats: {
    summary: 'requests, bytes and errors of each export (export: one), with its filters\' own figures',
    run: async (args, ctx) => {
      args.only('export');
      const exports = args.optionalString('export') === undefined ? ctx.registry.list() : [target(ctx, args)];
      return exports.map((e) => ({
        name: e.name,
        ...e.gateway.stats(),
        filters: filters(e).map((f, index) => ({ index, name: f.filterName, ...(f.stats ? { stats: f.stats() } : {}) })),
      }));
    },
  },
  'export-add': {
    summary: 'serve another image: name, file, readOnly, filters (--filter texts)',
    run: async (args, ctx) => {
      args.only('name', 'file', 'readOnly', 'filters');
      const spec = { name: args.string('name'), file: args.string('file'), readOnly: args.optionalBoolean('readOnly') ?? false, filters: args.optionalStrings('filters') ?? [] };
      if (ctx.registry.find(spec.name)) throw new ControlError('bad-argument', `export '${spec.name}' exists already`);
      await attempt(`export-add ${spec.name}`, () => ctx.addExport(spec));
      return describeExport(ctx.registry.find(spec.name)!, ctx);
    },
  },
  'export-remove': {
    summary: 'stop serving an export: its connections get ESHUTDOWN from then on; it is flushed and closed',
    run: async (args, ctx) => {
      args.only('name');
      const name = args.string('name');
      if (!ctx.registry.find(name)) throw new ControlError('not-found', `no export '${name}'`);
      const closed = await ctx.registry.remove(name);
      if (closed.failures.length > 0) {
        throw new ControlError('failed', `export '${name}' removed, but it failed to ${closed.failures.map((f) => `${f.step} (${(f.error as Error).message})`).join(' and ')}`);
      }
      return { removed: name };
    },
  },
  'filter-list': {
    summary: 'the filters of each export (export: one), nearest the client first, with their settings',
    run: async (args, ctx) => {
      args.only('export');
      const exports = args.optionalString('export') === undefined ? ctx.registry.list() : [target(ctx, args)];
      return exports.map((e) => ({ export: e.name, filters: describeExport(e, ctx).filters }));
    },
  },
  'filter-set': {
    summary: 'new settings for a filter, as --filter text (filter: "error:op=read,errno=EIO"; index: which one when there are several)',
    run: async (args, ctx) => {
      args.only('export', 'filter', 'index');
      const text = args.string('filter');
      let spec: { name: string; config: unknown };
      try {
        spec = ctx.parseFilter(text);
      } catch (err) {
        throw new ControlError('bad-argument', (err as Error).message);
      }
      const filter = filterOf(target(ctx, args), spec.name, args, 'configure');
      filter.configure!(spec.config);
      liveSettings.set(filter, text);
      return { filter: spec.name, settings: text };
    },
  },
  'filter-clear': {
    summary: 'a filter passes everything through until set again (name: its kind; index: which one)',
    run: async (args, ctx) => {
      args.only('export', 'name', 'index');
      const filter = filterOf(target(ctx, args), args.string('name'), args, 'configure');
      filter.configure!(null);
      liveSettings.set(filter, `${filter.filterName} (cleared)`);
      return { filter: filter.filterName, cleared: true };
    },
  },
  'power-cut': {
    summary: 'drop what the power-cut filter holds unflushed (policy: all|random|torn; seed)',
    run: async (args, ctx) => {
      args.only('export', 'policy', 'seed', 'index');
      const policy = args.optionalString('policy');
      if (policy !== undefined && !['all', 'random', 'torn'].includes(policy)) throw new ControlError('bad-argument', `policy must be all, random or torn, not '${policy}'`);
      const seed = args.optionalInteger('seed', 0, 2 ** 32 - 1);
      const filter = filterOf(target(ctx, args), 'power-cut', args, 'cut');
      return attempt('power-cut', () => filter.cut!({ policy, seed }));
    },
  },
  mark: {
    summary: 'a named mark in the journal (name)',
    run: async (args, ctx) => {
      args.only('export', 'name', 'index');
      const name = args.string('name');
      const filter = filterOf(target(ctx, args), 'journal', args, 'mark');
      return attempt('mark', () => filter.mark!(name));
    },
  },
  'bitmap-start': {
    summary: 'start a dirty bitmap (name; granularity in bytes)',
    run: async (args, ctx) => {
      args.only('export', 'name', 'granularity', 'index');
      const name = args.string('name');
      const granularity = args.optionalInteger('granularity', 512, 2 ** 31);
      const filter = filterOf(target(ctx, args), 'dirty', args, 'start');
      return attempt('bitmap-start', () => filter.start!(name, { granularity }));
    },
  },
  'bitmap-clear': {
    summary: 'mark a dirty bitmap clean (name)',
    run: async (args, ctx) => {
      args.only('export', 'name', 'index');
      const name = args.string('name');
      const filter = filterOf(target(ctx, args), 'dirty', args, 'clear');
      return attempt('bitmap-clear', () => filter.clear!(name));
    },
  },
  'bitmap-drop': {
    summary: 'remove a dirty bitmap (name)',
    run: async (args, ctx) => {
      args.only('export', 'name', 'index');
      const name = args.string('name');
      const filter = filterOf(target(ctx, args), 'dirty', args, 'drop');
      return attempt('bitmap-drop', () => filter.drop!(name));
    },
  },
  'bitmap-list': {
    summary: 'the dirty bitmaps and how much each holds',
    run: async (args, ctx) => {
      args.only('export', 'index');
      const filter = filterOf(target(ctx, args), 'dirty', args, 'list');
      return attempt('bitmap-list', () => filter.list!());
    },
  },
  'snapshot-create': {
    summary: 'freeze the export\'s image as IMAGE@NAME and go on in a fresh overlay (name)',
    run: async (args, ctx, after) => {
      args.only('export', 'name');
      const name = args.string('name');
      const s = await switchImage(ctx, target(ctx, args), 'snapshot', after, (file) => createSnapshot(file, name, ctx.engine));
      return { name: s.name, file: s.file };
    },
  },
  'snapshot-list': {
    summary: 'the snapshots in the export\'s chain, newest first',
    run: async (args, ctx) => {
      args.only('export');
      const live = liveImageOf(target(ctx, args));
      if (!live) throw new ControlError('bad-argument', 'the export has no image file (a memory image?)');
      return attempt('snapshot-list', () => listSnapshots(live.file).map((s) => ({ name: s.name, file: s.file, created: s.created.toISOString(), diskUsage: s.diskUsage })));
    },
  },
  'snapshot-revert': {
    summary: 'throw away everything written since snapshot NAME; clients read NAME\'s data from then on (name)',
    run: async (args, ctx, after) => {
      args.only('export', 'name');
      const name = args.string('name');
      const removed = await switchImage(ctx, target(ctx, args), 'revert', after, (file) => revertSnapshot(file, name, ctx.engine));
      return { reverted: name, removed };
    },
  },
  'snapshot-fork': {
    summary: 'a second overlay NEWTOP on snapshot NAME, beside the export\'s image (name, newTop)',
    run: async (args, ctx, after) => {
      args.only('export', 'name', 'newTop');
      const name = args.string('name');
      const newTop = args.string('newTop');
      await switchImage(ctx, target(ctx, args), 'fork', after, (file) => forkSnapshot(file, name, newTop, ctx.engine));
      return { forked: name, file: newTop };
    },
  },
  shutdown: {
    summary: 'stop the server as SIGTERM would: requests in flight finish, exports are flushed and closed',
    run: async (args, ctx) => {
      args.only();
      setImmediate(() => ctx.shutdown());
      return { shuttingDown: true };
    },
  },
};

/** Runs one request's command; every failure is a ControlError. */
export async function runCommand(command: string, args: Record<string, unknown>, ctx: ControlContext, after: AfterResponse): Promise<unknown> {
  const c = Object.hasOwn(COMMANDS, command) ? COMMANDS[command] : undefined;
  if (!c) throw new ControlError('unknown-command', `unknown command '${command}' (commands: ${Object.keys(COMMANDS).join(', ')})`);
  return c.run(new Arguments(args), ctx, after);
}
