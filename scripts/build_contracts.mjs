#!/usr/bin/env node
// Compiles contracts/src/**/*.sol with the pinned solc-js (contracts/package.json) and writes
// contracts/artifacts/<Name>.json: abi, bytecode, deployed bytecode, compiler version, settings and the sha256 of
// every source that went in (ours and the OpenZeppelin files they import).
//
//   node scripts/build_contracts.mjs           write the artifacts
//   node scripts/build_contracts.mjs --check   recompile and exit 1 when the committed artifacts differ
//
// Needs contracts/node_modules (scripts/setup-contracts installs it).
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, relative, sep } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "contracts");
const SRC = join(ROOT, "src");
const OUT = join(ROOT, "artifacts");
const MODULES = join(ROOT, "node_modules");

// Fixed settings: the artifacts must be reproducible byte for byte. "cancun" runs on py-evm (eth-tester's
// default VM is Prague) and on anvil's default hardfork.
const SETTINGS = {
  evmVersion: "cancun",
  optimizer: { enabled: true, runs: 200 },
  metadata: { bytecodeHash: "ipfs" },
  outputSelection: {
    "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object", "evm.deployedBytecode.immutableReferences"] },
  },
};

function solFiles(dir) {
  return readdirSync(dir)
    .sort()
    .flatMap((name) => {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) return solFiles(path);
      return name.endsWith(".sol") ? [path] : [];
    });
}

function sha256(text) {
  return createHash("sha256").update(text, "utf8").digest("hex");
}

function compile() {
  if (!existsSync(join(MODULES, "solc"))) {
    console.error(`missing ${join(MODULES, "solc")}: run scripts/setup-contracts first`);
    process.exit(2);
  }
  const solc = createRequire(join(ROOT, "package.json"))("solc");
  const sources = {};
  for (const path of solFiles(SRC)) {
    sources[relative(ROOT, path).split(sep).join("/")] = { content: readFileSync(path, "utf8") };
  }
  const imported = {};
  const findImports = (path) => {
    const file = join(MODULES, path);
    if (!path.startsWith("@openzeppelin/") || !existsSync(file)) return { error: `not found: ${path}` };
    imported[path] = readFileSync(file, "utf8");
    return { contents: imported[path] };
  };
  const input = { language: "Solidity", sources, settings: SETTINGS };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
  const problems = (output.errors || []).filter((e) => e.severity === "error" || e.type === "Warning");
  for (const e of problems) console.error(e.formattedMessage);
  if (problems.length) process.exit(1);

  const sourceHashes = {};
  for (const name of Object.keys(output.sources).sort()) {
    sourceHashes[name] = sha256(name in sources ? sources[name].content : imported[name]);
  }
  const artifacts = {};
  for (const sourceName of Object.keys(sources)) {
    for (const [contractName, c] of Object.entries(output.contracts[sourceName])) {
      const artifact = {
        contractName,
        sourceName,
        compiler: { name: "solc-js", version: solc.version() },
        settings: { evmVersion: SETTINGS.evmVersion, optimizer: SETTINGS.optimizer, metadata: SETTINGS.metadata },
        sources: sourceHashes,
        abi: c.abi,
        bytecode: "0x" + c.evm.bytecode.object,
        deployedBytecode: "0x" + c.evm.deployedBytecode.object,
        // byte ranges of the deployed code that the constructor fills in: a client masks them to check that an
        // address holds this code (openlora.chain.pinning)
        immutableReferences: Object.values(c.evm.deployedBytecode.immutableReferences || {})
          .flat()
          .sort((x, y) => x.start - y.start),
      };
      artifacts[`${contractName}.json`] = JSON.stringify(artifact, null, 2) + "\n";
    }
  }
  return artifacts;
}

const artifacts = compile();
if (process.argv.includes("--check")) {
  const committed = existsSync(OUT) ? readdirSync(OUT).filter((n) => n.endsWith(".json")) : [];
  const stale = Object.keys(artifacts).filter(
    (name) => !existsSync(join(OUT, name)) || readFileSync(join(OUT, name), "utf8") !== artifacts[name]
  );
  const extra = committed.filter((name) => !(name in artifacts));
  if (stale.length || extra.length) {
    console.error(
      `contracts/artifacts disagree with contracts/src: stale ${JSON.stringify(stale)}, ` +
        `extra ${JSON.stringify(extra)}. Run: node scripts/build_contracts.mjs`
    );
    process.exit(1);
  }
  console.log(`artifacts match sources (${Object.keys(artifacts).length} contracts)`);
} else {
  mkdirSync(OUT, { recursive: true });
  for (const [name, text] of Object.entries(artifacts)) writeFileSync(join(OUT, name), text);
  console.log(`wrote ${Object.keys(artifacts).join(", ")} to ${relative(process.cwd(), OUT) || "."}`);
}
