// Second reference for scripts/kubo_vectors.py: the JS UnixFS importer configured the way Kubo's
// `ipfs add` is by default (fixed 256 KiB chunks, balanced layout with at most 174 links per node,
// a single chunk reduced to its own leaf) — CIDv0 with dag-pb UnixFS "file" leaves, and CIDv1
// with raw leaves (what `--cid-version=1` implies).
//
// kubo_vectors.py copies this file next to an `npm install ipfs-unixfs-importer` (outside the
// repository) and runs `node kubo_vectors.mjs [--chunk BYTES --links N] FILE...`; it prints
// {"FILE": {"0": cid, "1": cid}}. --chunk/--links shrink the tree so that deep DAGs (3+ levels)
// stay small; they default to Kubo's 262144 and 174.
import { createReadStream } from 'node:fs'
import { importer } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'

const args = process.argv.slice(2)
const option = (flag, fallback) => {
  const at = args.indexOf(flag)
  return at < 0 ? fallback : Number(args.splice(at, 2)[1])
}
const chunkSize = option('--chunk', 262144)
const maxChildrenPerNode = option('--links', 174)

const KUBO_LIKE = {
  chunker: fixedSize({ chunkSize }),
  layout: balanced({ maxChildrenPerNode }),
  reduceSingleLeafToSelf: true,
  wrapWithDirectory: false
}
const VERSIONS = {
  0: { ...KUBO_LIKE, cidVersion: 0, rawLeaves: false, leafType: 'file' },
  1: { ...KUBO_LIKE, cidVersion: 1, rawLeaves: true }
}

// Only the CIDs are wanted: blocks are hashed and dropped.
const discard = { put: async (cid) => cid }

async function cidOf (path, options) {
  let last
  for await (const entry of importer([{ content: createReadStream(path) }], discard, options)) {
    last = entry
  }
  return last.cid.toString()
}

const out = {}
for (const path of args) {
  out[path] = { 0: await cidOf(path, VERSIONS[0]), 1: await cidOf(path, VERSIONS[1]) }
}
console.log(JSON.stringify(out))
