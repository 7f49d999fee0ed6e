// RBD image names as QEMU writes them, so one name works in vblk, in
// qemu-img and in a qcow2 header's backing file:
//
//   rbd:POOL[/NAMESPACE]/IMAGE[@SNAPSHOT][:KEY=VALUE...]
//
// KEY=VALUE pairs configure the cluster connection: `conf` (a ceph.conf),
// `id` (the client name without "client."), and anything else a Ceph
// option (keyring, mon_host, ...). A backslash takes the next character
// as it is (a ':' or '@' in a name). Pure: parsing and printing only.

export interface RbdName {
  pool: string;
  /** '' for the default namespace. */
  namespace: string;
  image: string;
  snapshot: string | null;
  /** KEY=VALUE pairs in the order given. */
  options: [string, string][];
}

export function isRbdName(name: string): boolean {
  return name.startsWith('rbd:');
}

/** Splits on each unescaped `separator`, keeping the escapes. */
function pieces(text: string, separator: string): string[] {
  const out = [''];
  for (let i = 0; i < text.length; i++) {
    if (text[i] === separator) out.push('');
    else out[out.length - 1] += text[i] === '\\' && i + 1 < text.length ? text[i] + text[++i] : text[i];
  }
  return out;
}

/** Splits at the first unescaped `separator`, keeping the escapes in both halves. */
function cut(text: string, separator: string): [string, string | null] {
  const [first, ...rest] = pieces(text, separator);
  return rest.length === 0 ? [first, null] : [first, text.slice(first.length + 1)];
}

/** Removes the backslashes, keeping what each escaped. */
function unescape(text: string): string {
  return text.replace(/\\(.)/g, '$1');
}

/** Parses an rbd: name; throws a RangeError that says what is wrong. */
export function parseRbdName(name: string): RbdName {
  if (!isRbdName(name)) throw new RangeError(`'${name}' is not an RBD name (rbd:POOL/IMAGE[@SNAPSHOT])`);
  const [spec, rest] = cut(name.slice(4), ':');
  const [path, snap] = cut(spec, '@');
  const parts = pieces(path, '/').map(unescape);
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => p === '')) {
    throw new RangeError(`'${name}': expected rbd:POOL/IMAGE or rbd:POOL/NAMESPACE/IMAGE, with no empty part`);
  }
  const snapshot = snap === null ? null : unescape(snap);
  if (snapshot === '') throw new RangeError(`'${name}': the snapshot name after '@' is empty`);
  const options: [string, string][] = [];
  for (const pair of rest === null ? [] : pieces(rest, ':')) {
    const [key, value] = cut(pair, '=');
    if (value === null || key === '') throw new RangeError(`'${name}': expected KEY=VALUE after ':', not '${pair}'`);
    options.push([unescape(key), unescape(value)]);
  }
  return {
    pool: parts[0],
    namespace: parts.length === 3 ? parts[1] : '',
    image: parts.at(-1)!,
    snapshot,
    options,
  };
}

/** Escapes what would end the part of the name `text` is in: `specials` and the backslash. */
function escape(text: string, specials: RegExp): string {
  return text.replace(specials, (c) => `\\${c}`);
}

/** The name back as text: POOL/[NAMESPACE/]IMAGE[@SNAPSHOT] (the image, as the rbd CLI names it). */
export function imageSpec(name: RbdName): string {
  const path = [name.pool, ...(name.namespace ? [name.namespace] : []), name.image].join('/');
  return name.snapshot === null ? path : `${path}@${name.snapshot}`;
}

/** The whole name in QEMU's syntax, options included. */
export function formatRbdName(name: RbdName): string {
  const inName = /[\\:@/]/g;
  const inOption = /[\\:]/g;
  const path = [name.pool, ...(name.namespace ? [name.namespace] : []), name.image].map((p) => escape(p, inName)).join('/');
  const snap = name.snapshot === null ? '' : `@${escape(name.snapshot, inName)}`;
  return `rbd:${path}${snap}${name.options.map(([k, v]) => `:${escape(k, inOption)}=${escape(v, inOption)}`).join('')}`;
}
