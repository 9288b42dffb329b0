import AlignersEngine
import Foundation
import AlignersCore

/// The decoder inspectors' question: the chat model is asked whether an answer meets one criterion,
/// and its verdict is the logit of "Yes" against "No" at the start of its reply. One definition for
/// training and serving, so an adapter trained on it plugs in unchanged.
public enum VerdictPrompt {
    public static let yes = "Yes"
    public static let no = "No"

    /// The ChatML prompt up to the assistant's first token; the conversation is cut from the front and
    /// the answer at the end (as the aligners' prompts are), control-token text escaped.
    public static func text(criterion description: String, exchange: Exchange, maxConversationCharacters: Int = 1200,
                            maxAnswerCharacters: Int = 1500) -> String {
        var x = TrainedAligner.renderX(exchange.conversation)
        if x.count > maxConversationCharacters { x = PromptedAligner.tail(x, maxConversationCharacters) }
        let y = PromptedAligner.head(exchange.response, maxAnswerCharacters)
        let system = "You check whether an assistant's answer meets one criterion: \(description). Reply \(yes) if it does, \(no) if it does not."
        let user = "Conversation:\n\(PromptedAligner.sanitize(x))\n\nAnswer:\n\(PromptedAligner.sanitize(y))\n\nDoes the answer meet the criterion?"
        return "<|im_start|>system\n\(system)<|im_end|>\n<|im_start|>user\n\(user)<|im_end|>\n<|im_start|>assistant\n"
    }
}
