import Foundation

/// PEFT's LoRA checkpoint format for `LlamaForCausalLM` (huggingface/peft,
/// docs/source/developer_guides/checkpoint.md): a directory with `adapter_config.json` and
/// `adapter_model.safetensors`, whose tensors are named
/// `base_model.model.model.layers.<i>.<self_attn|mlp>.<target>.lora_<A|B>.weight`.
///
/// Hugging Face checkpoints order the rows of Q and K per head as two halves (rotate_half), while
/// the GGUF (and so our decoder) interleaves them: GGUF row `h·d + 2i + j` is HF row
/// `h·d + j·d/2 + i` (d the head size). lora_B of q_proj and k_proj is converted on the way in and out;
/// lora_A (the input side) and every other module need nothing.
public enum PEFTAdapter {
    public static let configFile = "adapter_config.json"
    public static let weightsFile = "adapter_model.safetensors"

    public struct FormatError: Error, CustomStringConvertible {
        public let path: String
        public let problem: String
        public var description: String { "\(path): \(problem)" }
    }

    public static func tensorName(layer: Int, _ target: LoRATarget, _ matrix: String) -> String {
        "base_model.model.model.layers.\(layer).\(target.modulePath).lora_\(matrix).weight"
    }

    /// Reads an adapter directory for a model of `model`'s shape.
    public static func load(directory: String, model: DecoderConfig) throws -> LoRAAdapter {
        let dir = URL(fileURLWithPath: directory)
        let configURL = dir.appendingPathComponent(configFile)
        func fail(_ p: String, _ path: String = configURL.path) -> FormatError { FormatError(path: path, problem: p) }
        guard let data = FileManager.default.contents(atPath: configURL.path) else {
            throw fail("not found; an adapter directory holds \(configFile) and \(weightsFile) (PEFT's save_pretrained layout)")
        }
        guard let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { throw fail("is not a JSON object") }
        guard (json["peft_type"] as? String)?.uppercased() == "LORA" else {
            throw fail("peft_type is \(json["peft_type"].map { "\($0)" } ?? "missing"); only LORA adapters are supported")
        }
        guard let rank = json["r"] as? Int, rank > 0 else { throw fail("r (the rank) is missing or not a positive integer") }
        let alpha = (json["lora_alpha"] as? NSNumber)?.floatValue ?? Float(rank)
        let dropout = (json["lora_dropout"] as? NSNumber)?.floatValue ?? 0
        if let bias = json["bias"] as? String, bias != "none" { throw fail("bias is \"\(bias)\"; only \"none\" is supported") }
        if json["use_dora"] as? Bool == true { throw fail("use_dora is true; DoRA adapters are not supported") }
        if json["fan_in_fan_out"] as? Bool == true { throw fail("fan_in_fan_out is true; Llama's Linear layers are not Conv1D") }
        if let m = json["modules_to_save"], !(m is NSNull), (m as? [Any])?.isEmpty == false {
            throw fail("modules_to_save is set; adapters that replace whole modules are not supported")
        }
        for key in ["rank_pattern", "alpha_pattern"] {
            if let p = json[key] as? [String: Any], !p.isEmpty { throw fail("\(key) is set; per-module ranks are not supported") }
        }
        let targets: [LoRATarget]
        if let list = json["target_modules"] as? [String] {
            targets = try list.map { name in
                guard let t = LoRATarget(rawValue: name) else {
                    throw fail("target module \"\(name)\" is not one of \(LoRATarget.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                return t
            }
        } else if json["target_modules"] as? String == "all-linear" {
            targets = LoRATarget.allCases
        } else {
            throw fail("target_modules must be a list of module names (or \"all-linear\")")
        }
        var layers: [Int]?
        if let l = json["layers_to_transform"] as? [Int] { layers = l } else if let l = json["layers_to_transform"] as? Int { layers = [l] }
        let config = LoRAConfig(rank: rank, alpha: alpha, dropout: dropout, targets: targets, layers: layers,
                                useRSLoRA: json["use_rslora"] as? Bool ?? false,
                                baseModel: json["base_model_name_or_path"] as? String ?? "")

        let weightsPath = dir.appendingPathComponent(weightsFile).path
        guard FileManager.default.fileExists(atPath: weightsPath) else { throw fail("not found (the adapter's weights)", weightsPath) }
        let st = try SafetensorsFile(path: weightsPath)
        var modules: [LoRAModule] = []
        var used = Set<String>()
        for layer in 0..<model.layers where config.adapts(layer: layer) {
            for target in config.targets {
                let an = tensorName(layer: layer, target, "A"), bn = tensorName(layer: layer, target, "B")
                guard st.names.contains(an) || st.names.contains(bn) else { continue }
                let (inputs, outputs) = target.shape(model)
                let a = try st.floats(an, shape: [rank, inputs])
                var b = try st.floats(bn, shape: [outputs, rank])
                used.insert(an); used.insert(bn)
                switch target {
                case .q: b = permuteRows(b, heads: model.heads, headDim: model.headDim, rank: rank, toGGUF: true)
                case .k: b = permuteRows(b, heads: model.kvHeads, headDim: model.headDim, rank: rank, toGGUF: true)
                default: break
                }
                modules.append(LoRAModule(layer: layer, target: target, inputs: inputs, outputs: outputs, a: a, b: b))
            }
        }
        if let stray = st.names.first(where: { !used.contains($0) }) {
            throw fail("tensor \(stray) is not a LoRA matrix of this \(model.layers)-layer model's \(config.targets.map(\.rawValue)) "
                       + "(wrong base model, or layers_to_transform/target_modules disagree with the weights)", weightsPath)
        }
        guard !modules.isEmpty else { throw fail("holds no LoRA matrices", weightsPath) }
        let adapter = LoRAAdapter(config: config, modules: modules, name: dir.lastPathComponent)
        try adapter.check(against: model)
        return adapter
    }

    /// Writes `adapter` as PEFT would (`half`: F16 weights, else F32).
    public static func save(_ adapter: LoRAAdapter, model: DecoderConfig, to directory: String, half: Bool = false) throws {
        let dir = URL(fileURLWithPath: directory)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let c = adapter.config
        var config: [String: Any] = [
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": c.rank, "lora_alpha": c.alpha, "lora_dropout": c.dropout,
            "target_modules": c.targets.map(\.rawValue), "bias": "none", "fan_in_fan_out": false, "use_rslora": c.useRSLoRA,
            "use_dora": false, "inference_mode": true, "init_lora_weights": true, "modules_to_save": NSNull(),
            "base_model_name_or_path": c.baseModel, "rank_pattern": [String: Any](), "alpha_pattern": [String: Any](),
            "layers_to_transform": c.layers.map { $0 as Any } ?? NSNull(), "layers_pattern": NSNull(), "revision": NSNull(),
        ]
        // JSON numbers: keep whole alphas integral, as PEFT writes them.
        if c.alpha == c.alpha.rounded() { config["lora_alpha"] = Int(c.alpha) }
        let json = try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys])
        try json.write(to: dir.appendingPathComponent(configFile), options: .atomic)
        var tensors: [SafetensorsWriter.Tensor] = []
        for m in adapter.modules {
            var b = m.b
            switch m.target {
            case .q: b = permuteRows(b, heads: model.heads, headDim: model.headDim, rank: c.rank, toGGUF: false)
            case .k: b = permuteRows(b, heads: model.kvHeads, headDim: model.headDim, rank: c.rank, toGGUF: false)
            default: break
            }
            tensors.append(.init(name: tensorName(layer: m.layer, m.target, "A"), shape: [c.rank, m.inputs], values: m.a, half: half))
            tensors.append(.init(name: tensorName(layer: m.layer, m.target, "B"), shape: [m.outputs, c.rank], values: b, half: half))
        }
        try SafetensorsWriter.write(tensors, metadata: ["format": "pt"], to: dir.appendingPathComponent(weightsFile))
    }

    /// Reorders the rows of a [heads·headDim × width] matrix between HF's half-split and the GGUF's
    /// interleaved RoPE layout.
    static func permuteRows(_ m: [Float], heads: Int, headDim: Int, rank width: Int, toGGUF: Bool) -> [Float] {
        var out = m
        let half = headDim / 2
        for h in 0..<heads {
            for i in 0..<half {
                for j in 0..<2 {
                    let gguf = h * headDim + 2 * i + j, hf = h * headDim + j * half + i
                    let (src, dst) = toGGUF ? (hf, gguf) : (gguf, hf)
                    for c in 0..<width { out[dst * width + c] = m[src * width + c] }
                }
            }
        }
        return out
    }
}
