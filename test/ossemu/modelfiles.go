package ossemu

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// The text files of a Hugging-Face-shaped llama model. Their content is
// deterministic for a seed; it is plausible rather than usable.

type llamaConfig struct {
	Architectures         []string `json:"architectures"`
	BOSTokenID            int      `json:"bos_token_id"`
	EOSTokenID            int      `json:"eos_token_id"`
	HiddenAct             string   `json:"hidden_act"`
	HiddenSize            int64    `json:"hidden_size"`
	IntermediateSize      int64    `json:"intermediate_size"`
	MaxPositionEmbeddings int      `json:"max_position_embeddings"`
	ModelType             string   `json:"model_type"`
	NumAttentionHeads     int64    `json:"num_attention_heads"`
	NumHiddenLayers       int      `json:"num_hidden_layers"`
	NumKeyValueHeads      int64    `json:"num_key_value_heads"`
	RMSNormEps            float64  `json:"rms_norm_eps"`
	RopeTheta             float64  `json:"rope_theta"`
	TieWordEmbeddings     bool     `json:"tie_word_embeddings"`
	TorchDtype            string   `json:"torch_dtype"`
	TransformersVersion   string   `json:"transformers_version"`
	UseCache              bool     `json:"use_cache"`
	VocabSize             int64    `json:"vocab_size"`
}

type generationConfig struct {
	BOSTokenID          int     `json:"bos_token_id"`
	DoSample            bool    `json:"do_sample"`
	EOSTokenID          int     `json:"eos_token_id"`
	Temperature         float64 `json:"temperature"`
	TopP                float64 `json:"top_p"`
	TransformersVersion string  `json:"transformers_version"`
}

type tokenizerConfig struct {
	AddBOSToken               bool   `json:"add_bos_token"`
	AddEOSToken               bool   `json:"add_eos_token"`
	BOSToken                  string `json:"bos_token"`
	CleanUpTokenizationSpaces bool   `json:"clean_up_tokenization_spaces"`
	EOSToken                  string `json:"eos_token"`
	Legacy                    bool   `json:"legacy"`
	ModelMaxLength            int    `json:"model_max_length"`
	PadToken                  any    `json:"pad_token"`
	TokenizerClass            string `json:"tokenizer_class"`
	UnkToken                  string `json:"unk_token"`
}

type addedToken struct {
	ID         int    `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized bool   `json:"normalized"`
	Special    bool   `json:"special"`
}

type tokenizerFile struct {
	Version       string         `json:"version"`
	Truncation    any            `json:"truncation"`
	Padding       any            `json:"padding"`
	AddedTokens   []addedToken   `json:"added_tokens"`
	Normalizer    any            `json:"normalizer"`
	PreTokenizer  map[string]any `json:"pre_tokenizer"`
	PostProcessor any            `json:"post_processor"`
	Decoder       map[string]any `json:"decoder"`
	Model         tokenizerModel `json:"model"`
}

type tokenizerModel struct {
	Type     string         `json:"type"`
	Dropout  any            `json:"dropout"`
	UnkToken string         `json:"unk_token"`
	Vocab    map[string]int `json:"vocab"`
	Merges   []string       `json:"merges"`
}

const (
	tokenizerVocab  = 2048
	tokenizerMerges = 1024
)

func marshalFile(name string, v any) (modelFile, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // keep "<s>" readable
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return modelFile{}, fmt.Errorf("render %s: %w", name, err)
	}
	return modelFile{name: name, text: b.Bytes()}, nil
}

// textFiles renders config.json, generation_config.json, tokenizer.json and
// tokenizer_config.json.
func textFiles(d dims, seed int64) ([]modelFile, error) {
	headDim := int64(128)
	if d.hidden < 1024 {
		headDim = 64
	}
	heads := max(1, d.hidden/headDim)
	docs := []struct {
		name string
		v    any
	}{
		{"config.json", llamaConfig{
			Architectures: []string{"LlamaForCausalLM"}, BOSTokenID: 1, EOSTokenID: 2, HiddenAct: "silu",
			HiddenSize: d.hidden, IntermediateSize: d.intermediate, MaxPositionEmbeddings: 4096,
			ModelType: "llama", NumAttentionHeads: heads, NumHiddenLayers: d.layers, NumKeyValueHeads: heads,
			RMSNormEps: 1e-5, RopeTheta: 10000, TorchDtype: "bfloat16", TransformersVersion: "4.44.0",
			UseCache: true, VocabSize: d.vocab,
		}},
		{"generation_config.json", generationConfig{
			BOSTokenID: 1, DoSample: true, EOSTokenID: 2, Temperature: 0.6, TopP: 0.9, TransformersVersion: "4.44.0",
		}},
		{"tokenizer.json", tokenizer(seed)},
		{"tokenizer_config.json", tokenizerConfig{
			AddBOSToken: true, BOSToken: "<s>", EOSToken: "</s>", ModelMaxLength: 4096,
			TokenizerClass: "LlamaTokenizerFast", UnkToken: "<unk>",
		}},
	}
	files := make([]modelFile, 0, len(docs))
	for _, doc := range docs {
		f, err := marshalFile(doc.name, doc.v)
		if err != nil {
			return nil, err
		}
		files = append(files, f)
	}
	return files, nil
}

// tokenizer builds a byte-level BPE tokenizer.json of a few tens of KB.
func tokenizer(seed int64) tokenizerFile {
	r := rng{s: streamKey(seed, -1)}
	special := []string{"<unk>", "<s>", "</s>"}
	vocab := make(map[string]int, tokenizerVocab)
	var added []addedToken
	for i, s := range special {
		vocab[s] = i
		added = append(added, addedToken{ID: i, Content: s, Special: true})
	}
	words := make([]string, 0, tokenizerVocab)
	for len(vocab) < tokenizerVocab {
		w := make([]byte, 2+r.intn(7))
		for i := range w {
			w[i] = byte('a' + r.intn(26))
		}
		word := string(w)
		if r.intn(2) == 0 {
			word = "Ġ" + word
		}
		if _, dup := vocab[word]; dup {
			continue
		}
		vocab[word] = len(vocab)
		words = append(words, word)
	}
	merges := make([]string, tokenizerMerges)
	for i := range merges {
		merges[i] = words[r.intn(len(words))] + " " + words[r.intn(len(words))]
	}
	return tokenizerFile{
		Version:      "1.0",
		AddedTokens:  added,
		PreTokenizer: map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
		Decoder:      map[string]any{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
		Model:        tokenizerModel{Type: "BPE", UnkToken: "<unk>", Vocab: vocab, Merges: merges},
	}
}

// indexJSON renders model.safetensors.index.json.
func indexJSON(totalSize int64, weightMap map[string]string) ([]byte, error) {
	f, err := marshalFile("model.safetensors.index.json", struct {
		Metadata  map[string]int64  `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}{map[string]int64{"total_size": totalSize}, weightMap})
	return f.text, err
}
